"""Compile every Triton kernel for real GPU targets (sm_80, sm_90) without a GPU.

The interpreter accepts code that the compiler rejects; this catches that on CPU-only machines (it needs only the
ptxas that ships with triton). Triton fixes interpreter mode when it is imported, and this test session runs it
in the interpreter, so the compile runs in a fresh Python process with TRITON_INTERPRET=0.
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPILE_ALL = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from transxnet_ops.triton import _depthwise_kernels as dk

FP32_ARGS = {"lse_ptr", "delta_ptr", "partial_ptr", "part_ptr"}

# The attention kernels are compiled as launched (recorded launches, fp32 and fp64 scalars) in test_triton_osra.py.
KERNELS = {
    # depthwise family (IDConv and dwconv2d): two register-window segments in one launch, the direct path (large K)
    "dw_fwd": (dk._dw_fwd, lambda fp32: dict(K0=5, K1=3, K2=1, K3=1, NSEG=2, E=2, PER_SAMPLE=False, HAS_BIAS=True,
                                             IS_FP64=False, BLOCK_P=4, LANES=8)),
    "dw_bwd": (dk._dw_bwd, lambda fp32: dict(K0=5, K1=3, K2=1, K3=1, NSEG=2, E=2, PER_SAMPLE=False, IS_FP64=False,
                                             BLOCK_P=4, LANES=8)),
    "dw_reduce_partials": (dk._dw_reduce_partials, lambda fp32: dict(HAS_GB=True, IS_FP64=False, BLOCK=256)),
    "dw_fwd_direct": (dk._dw_fwd_direct, lambda fp32: dict(K=11, FLIP=True, PER_SAMPLE=True, HAS_BIAS=False,
                                                           IS_FP64=False, BLOCK_H=8, BLOCK_W=32)),
    "dw_wgrad_direct": (dk._dw_wgrad_direct, lambda fp32: dict(K=11, PER_SAMPLE=False, IS_FP64=False, BLOCK_H=8,
                                                               BLOCK_W=32)),
}

def signature(fn, constexprs, dtype):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FP32_ARGS:
            sig[name] = "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        else:
            sig[name] = "fp32" if name == "scale" else "i32"
    return sig

arch, failures = int(sys.argv[1]), 0
for kernel, (fn, make) in KERNELS.items():
    for dtype in ("fp32", "bf16", "fp16"):
        constexprs = make(dtype == "fp32")
        src = ASTSource(fn, signature(fn, constexprs, dtype),
                        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
            assert compiled.asm["ptx"], "no PTX"
            print(f"ok   {kernel} {dtype} sm_{arch} shared={compiled.metadata.shared}")
        except Exception as exc:
            failures += 1
            print(f"FAIL {kernel} {dtype} sm_{arch}: {type(exc).__name__}: {exc}")
sys.exit(1 if failures else 0)
'''


@pytest.mark.parametrize("arch", [80, 90])
def test_all_kernels_compile_for_gpu(arch):
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", COMPILE_ALL, str(arch)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == 15, run.stdout  # 5 kernels x 3 dtypes
