"""Compile every Triton kernel for real GPU targets (sm_80, sm_90) without a GPU.

The interpreter accepts code the compiler rejects; this catches that on CPU-only machines (it needs only the
ptxas that ships with triton). The kernel modules are loaded afresh with the interpreter off, since the test
session itself runs Triton in the interpreter when there is no GPU.
"""
import importlib.util
import os

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import transxnet_ops.triton  # noqa: E402


def _load_jit_module(name):
    path = os.path.join(os.path.dirname(transxnet_ops.triton.__file__), name + ".py")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        spec = importlib.util.spec_from_file_location(f"_gpu_compile_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module


ik = _load_jit_module("_idconv_kernels")
ok = _load_jit_module("_osra_kernels")

FP32_ARGS = {"lse_ptr", "delta_ptr", "partial_ptr"}


def _signature(fn, constexprs, dtype):
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


def _attn(extra):
    return lambda fp32: dict(IS_FP32=fp32, IS_FP64=False, BLOCK_N=64, BLOCK_M=64, BLOCK_D=32, **extra)


KERNELS = {
    "attn_fwd": (ok._attn_fwd, _attn(dict(HAS_BIAS=True))),
    "attn_bwd_dq": (ok._attn_bwd_dq, _attn(dict(HAS_BIAS=True))),
    "attn_bwd_dkdv": (ok._attn_bwd_dkdv, _attn(dict(HAS_BIAS=False))),
    "attn_bwd_dbias": (ok._attn_bwd_dbias, _attn({})),
    "idconv_fwd": (ik._idconv_fwd, lambda fp32: dict(K=7, FLIP=False, HAS_BIAS=True, IS_FP64=False,
                                                     BLOCK_H=16, BLOCK_W=64)),
    "idconv_bwd_dw": (ik._idconv_bwd_dw, lambda fp32: dict(K=7, IS_FP64=False, BLOCK_H=16, BLOCK_W=64)),
}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_compiles_for_gpu(kernel, dtype, arch):
    fn, make_constexprs = KERNELS[kernel]
    assert hasattr(fn, "arg_names"), "expected a JITFunction (interpreter still on?)"
    constexprs = make_constexprs(dtype == "fp32")
    src = ASTSource(fn, _signature(fn, constexprs, dtype),
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
    assert compiled.asm["ptx"] and compiled.metadata.shared <= 160 * 1024
