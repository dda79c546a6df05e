#!/usr/bin/env bash
# Everything a lent GPU should tell us, in one device call, each step bounded by the time left:
#   1 build   offline, in place: pip install --no-build-isolation -e . (fallback: setup.py build_ext --inplace)
#   2 correctness   every op x GPU backend x dtype vs float64, forward and every gradient, each case isolated
#   3 tests   the pytest suite on the GPU (no -x; a per-test timeout where pytest-timeout is installed)
#   4 benchmarks    quick mode: GPU kernel time (profiler) beside eager latency, launches, floors; the model eager
#   5 memcheck      compute-sanitizer --tool memcheck on small odd shapes through the cuda backend
# then a one-screen summary, printed last.
#
#   scripts/gpu_check.sh OUTDIR [SECONDS]                 # on the GPU machine; budget default 480 s
#   scripts/gpu_check.sh --cpu-dry-run OUTDIR [SECONDS]   # here, no GPU: CPU backends, tiny shapes, a test
#                                                         # subset; GPU-only steps skipped with the reason
# OUTDIR receives at most 8 files (the device returns no more): summary.md build.log correctness.md tests.log
# benchmarks.md benchmarks.json sanitizer.log. Exit status 0 iff no step that ran failed or timed out.
# PYTHON picks the interpreter (default python3: the one that holds torch on the device machine); the model benchmark
# runs eager (official vs ours); GPU_CHECK_MODEL=full adds its torch.compile variants (minutes of compilation).
set -uo pipefail

dry=0
if [ "${1:-}" = "--cpu-dry-run" ]; then dry=1; shift; fi
out=${1:?usage: scripts/gpu_check.sh [--cpu-dry-run] OUTDIR [SECONDS]}
budget=${2:-480}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.." && root=$(pwd)
scratch=$(mktemp -d) && trap 'rm -rf "$scratch"' EXIT
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export TRANSXNET_LINEINFO=${TRANSXNET_LINEINFO:-1}  # source lines in the memcheck report
t0=$SECONDS
steps=$scratch/steps.tsv
: > "$steps"

left() { echo $((budget - (SECONDS - t0))); }
limit_for() { # CAP RESERVE -> seconds a step may take now
  local avail=$(($(left) - $2))
  echo $(($1 < avail ? $1 : avail))
}

# step NAME CAP RESERVE LOG CMD...: run CMD under `timeout min(CAP, time left - RESERVE)`, output appended to LOG;
# RESERVE keeps time for the later steps. Records NAME, PASS/FAIL/TIMEOUT/SKIPPED, seconds, detail.
step() {
  local name=$1 cap=$2 reserve=$3 log=$4
  shift 4
  local limit
  limit=$(limit_for "$cap" "$reserve")
  if [ "$limit" -lt 5 ]; then
    printf '%s\tSKIPPED\t0\tno time left (%ss of the budget, %ss kept for later steps)\n' "$name" "$(left)" \
      "$reserve" >> "$steps"
    return 0
  fi
  echo "=== $name (limit ${limit}s): $*" >> "$log"
  local start=$SECONDS rc state
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  case $rc in 0) state=PASS ;; 124 | 137) state=TIMEOUT ;; *) state=FAIL ;; esac
  printf '%s\t%s\t%s\texit %s, limit %ss\n' "$name" "$state" $((SECONDS - start)) "$rc" "$limit" >> "$steps"
  echo "=== $name: $state (exit $rc) after $((SECONDS - start))s" >> "$log"
  return $rc
}
skip() { printf '%s\tSKIPPED\t0\t%s\n' "$1" "$2" >> "$steps"; }

# ---------------------------------------------------------------- 0: environment (head of build.log)
{
  echo "gpu_check $(date -u +%FT%TZ) budget ${budget}s dry_run=$dry"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv || echo "nvidia-smi: not found"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1
  "$PY" -m pip --version
  command -v nvcc > /dev/null && nvcc --version | tail -1
} > "$out/build.log" 2>&1

# ---------------------------------------------------------------- 1: build
import_check=("$PY" -c "import transxnet_ops as t, sys
print('transxnet_ops', t.__file__, '| cpu', t.available_backends('cpu'), '| cuda', t.available_backends('cuda'))
print('extension:', t.extension_load_error or 'loaded')
sys.exit(0 if t.extension_load_error is None else 1)")
if [ $dry = 1 ]; then
  echo "dry run: no build (the extension built in place by 'make test' is used if present); on a GPU this step" \
    "runs: $PY -m pip install --no-build-isolation --no-deps -e . (fallback: $PY setup.py build_ext --inplace)" \
    >> "$out/build.log"
  step build 60 40 "$out/build.log" "${import_check[@]}"
else
  build() {
    "$PY" -m pip install --no-build-isolation --no-deps -e . && return 0
    echo "pip install failed: falling back to setup.py build_ext --inplace"
    "$PY" setup.py build_ext --inplace
  }
  export -f build
  export PY
  step build 300 200 "$out/build.log" bash -c build
  "${import_check[@]}" >> "$out/build.log" 2>&1 || true
fi

# ---------------------------------------------------------------- 2: correctness
if [ $dry = 1 ]; then
  correctness=(--device cpu --shapes tiny)
else
  correctness=(--device cuda --shapes gpu)
fi
# the harness stops starting cases 10 s before the step's limit, so its report is always written
step correctness 150 120 "$scratch/correctness.log" "$PY" scripts/gpu_correctness.py "${correctness[@]}" \
  --out "$out/correctness.md" --json "$scratch/correctness.json" --time-limit $(($(limit_for 150 120) - 10))
[ -f "$out/correctness.md" ] || cp "$scratch/correctness.log" "$out/correctness.md"

# ---------------------------------------------------------------- 3: tests
pytest_args=(-q -rfE -p no:cacheprovider)
"$PY" -c "import pytest_timeout" 2> /dev/null && pytest_args+=(--timeout 120)
if [ $dry = 1 ]; then  # a small, fast subset: the CPU suite is CI's job
  step tests 60 30 "$out/tests.log" "$PY" -m pytest "${pytest_args[@]}" tests/test_backends.py tests/test_reference.py
else  # the compile test and this script's own test are CPU-side: CI runs them
  step tests 180 100 "$out/tests.log" "$PY" -m pytest "${pytest_args[@]}" tests \
    --ignore=tests/test_triton_gpu_compile.py --ignore=tests/test_gpu_check.py
fi

# ---------------------------------------------------------------- 4: benchmarks (quick)
mkdir -p "$scratch/bench"
if [ $dry = 1 ]; then
  device=cpu bench_args=(--smoke --device cpu --no-plot --out "$scratch/bench")
else
  device=cuda bench_args=(--quick --device cuda --no-plot --out "$scratch/bench")
fi
step bench_idconv 100 110 "$scratch/bench.log" "$PY" benchmarks/bench_idconv.py "${bench_args[@]}"
step bench_osra 90 80 "$scratch/bench.log" "$PY" benchmarks/bench_osra.py "${bench_args[@]}"
# the model, official restatement vs ours, eager (inference and a training step); GPU_CHECK_MODEL=full adds the
# torch.compile variants and the detection-size case (minutes of compilation: more than a lease holds)
model_cap=90
if [ $dry = 1 ]; then  # a shared CPU: spinning OpenMP threads that lose their core make timings meaningless
  model_args=(--impls official,ours) && export OMP_WAIT_POLICY=PASSIVE
elif [ "${GPU_CHECK_MODEL:-}" = full ]; then
  model_args=(--dtypes bfloat16) model_cap=400
else
  model_args=(--impls official,ours --dtypes bfloat16 --detection no)
fi
step bench_model $model_cap 30 "$scratch/bench.log" "$PY" benchmarks/bench_model.py "${bench_args[@]}" "${model_args[@]}"

# ---------------------------------------------------------------- 5: compute-sanitizer memcheck
if [ $dry = 1 ]; then
  skip memcheck "dry run: compute-sanitizer needs a GPU ($(command -v compute-sanitizer || echo 'not installed here'))"
elif ! command -v compute-sanitizer > /dev/null; then
  skip memcheck "compute-sanitizer not found"
elif ! grep -q "'cuda'" "$out/build.log"; then
  skip memcheck "the cuda backend is not available (see build.log)"
else
  # no caching allocator: each tensor is its own allocation, so an access past its end is caught
  step memcheck 120 15 "$out/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
    --error-exitcode 9 --print-limit 30 "$PY" scripts/gpu_correctness.py --in-process --device cuda \
    --backends cuda --dtypes fp32,bf16 --shapes sanitize --out "$scratch/sanitize.md"
fi

# ---------------------------------------------------------------- summary (printed last)
"$PY" scripts/gpu_check_summary.py "$out" "$scratch" "$dry"
