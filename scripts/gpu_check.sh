#!/usr/bin/env bash
# Full GPU check on a machine with a GPU and torch preinstalled (no internet needed):
# build in place, run the whole test suite on the GPU, then the three benchmarks in quick mode.
#   scripts/gpu_check.sh OUTDIR
# Logs and results land in OUTDIR; every step runs even if an earlier one fails; exit status is non-zero
# if any step failed.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
failed=()

step() {  # step NAME COMMAND...: run, tee the log, remember failures
  local name=$1; shift
  echo "=== $name: $*" | tee "$out/$name.log"
  "$@" 2>&1 | tee -a "$out/$name.log" || failed+=("$name")
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
step build python -m pip install --no-build-isolation --no-deps -e .
step tests python -m pytest -q tests -rs
step bench_idconv python benchmarks/bench_idconv.py --quick --device cuda --out "$out"
step bench_osra python benchmarks/bench_osra.py --quick --device cuda --out "$out"
step bench_model python benchmarks/bench_model.py --quick --device cuda --out "$out"

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
