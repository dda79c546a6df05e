"""Compile every Triton kernel of the package for real GPU targets (sm_90, sm_80) without a GPU.

The interpreter accepts code the compiler rejects, and torch.compile hands kernels arguments typed differently
from eager Triton: inductor passes a Python float as an **fp64** scalar (eager Triton: fp32), so `s * scale` turns
fp32 blocks into fp64 and a loop-carried accumulator changes type ("Loop-carried variable m_i has initial type fp32
but is re-assigned to fp64"), a failure seen only on a GPU under torch.compile. This test finds the kernels
itself: benchmarks/_triton_launches.py runs the whole TransXNet model (backend "triton", train forward + backward
and eval forward) and every Triton custom op forward and backward on meta tensors under `_register.recording()`
(small odd shapes and the TransXNet-T shapes), attributes each launch to its op through a dispatch mode, then
compiles each recorded launch exactly as launched (constexprs, num_warps), with float scalars typed fp32 and fp64
and ints as Triton specialises them. A Triton op registered in transxnet_ops:: that no case launches fails the
test, so new ops are covered once the model calls them (or an input builder is added there). Runs in fresh
processes with TRITON_INTERPRET=0 (this session imported Triton in interpreter mode); needs only the ptxas that
ships with triton. ~290 compiles, ~1 s of CPU each on a fresh Triton cache (seconds once cached), split over two
processes.
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "_triton_launches.py")

PLANS = {  # fp16 compiles through the same 16-bit paths as bf16 (gpu_check runs it on a GPU)
    "sm90-odd-shapes": ["--arch", "90", "--shapes", "odd", "--dtypes", "fp32,bf16"],
    "sm90-transxnet-t": ["--arch", "90", "--shapes", "transxnet-t", "--dtypes", "bf16"],
    # sm_80 differs in the tensor-core lowering (mma, no wgmma): the 16-bit dots are what can break there
    "sm80-odd-shapes": ["--arch", "80", "--shapes", "odd", "--dtypes", "bf16"],
}


def _env():
    return dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _run_sharded(args, shards):
    """Run the launch compiler in `shards` processes at once; -> merged summary."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(shards):
            out = os.path.join(tmp, f"shard{i}.json")
            procs.append((out, subprocess.Popen([sys.executable, SCRIPT, *args, "--shard", f"{i}/{shards}",
                                                 "--json", out], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True)))
        summaries = []
        for out, proc in procs:
            log, _ = proc.communicate(timeout=1500)
            assert os.path.exists(out), f"the launch compiler crashed (exit {proc.returncode}):\n{log[-4000:]}"
            with open(out) as f:
                summaries.append(json.load(f))
    merged = dict(summaries[0], compiled=[r for s in summaries for r in s["compiled"]])
    return merged


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_triton_kernel_compiles_for_gpu(plan):
    summary = _run_sharded(PLANS[plan], shards=max(1, min(2, os.cpu_count() or 1)))
    assert summary["ops"], "no Triton custom op was discovered"
    assert not summary["problems"], "\n".join(summary["problems"])
    if "odd" in plan:  # the odd shapes take every path (e.g. large-K kernels the TransXNet shapes never need)
        assert not summary["never_launched"], (
            f"@triton.jit kernels that no op launches at the test shapes: {summary['never_launched']}")
    compiled = summary["compiled"]
    assert compiled, "nothing was compiled"
    launched_ops = {r["op"] for r in compiled}
    assert launched_ops == set(summary["ops"]), f"ops without a compiled kernel: {set(summary['ops']) - launched_ops}"
    failures = [f"{r['kernel']} sm_{r['arch']} [{r['op']} {r['label']} {r['dtype']}"
                + (f", float scalars {r['scalar']}" if r["scalar"] else "") + f"]: {r['error']}"
                for r in compiled if r["error"] is not None]
    assert not failures, f"{len(failures)} of {len(compiled)} compiles failed:\n" + "\n".join(failures)


PLANTED = '''
import triton
import triton.language as tl


@triton.jit
def planted_scaled_max(x_ptr, out_ptr, scale, n, BLOCK: tl.constexpr):
    """The shape of the bug: a loop-carried fp32 block updated with `... * scale`."""
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        x = tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0).to(tl.float32)
        m = tl.maximum(m, x * scale)
    tl.store(out_ptr + offs, m)
'''

CHECK_PLANTED = '''
import sys, torch
sys.path[:0] = sys.argv[1:3]
import planted, _triton_launches as L
x = torch.empty(100, device="meta")
record = dict(kernel=planted.planted_scaled_max, grid=(1,), args=(x, x, 0.5, 100), kwargs=dict(BLOCK=32, num_warps=1))
for case in L.compile_cases(record, ("fp32", "fp64")):
    print(case["scalar"], case["signature"]["scale"], "ok" if L.compile_case(case, 90)[1] is None else "fails")
'''


def test_harness_types_float_scalars_as_inductor_does(tmp_path):
    """The harness itself: a planted kernel with the bug compiles with fp32 scalars and fails with fp64 ones."""
    (tmp_path / "planted.py").write_text(textwrap.dedent(PLANTED))
    run = subprocess.run([sys.executable, "-c", CHECK_PLANTED, str(tmp_path), os.path.dirname(SCRIPT)], env=_env(),
                         cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split("\n")[:2] == ["fp32 fp32 ok", "fp64 fp64 fails"], run.stdout + run.stderr
