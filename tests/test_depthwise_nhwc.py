"""Channels-last (NHWC) inputs of the depthwise ops (idconv, dwconv2d) without a copy to NCHW:
  - CUDA: the NHWC kernels of csrc/depthwise/depthwise_nhwc_*.{cu,cuh,h}, on the CPU emulator of tests/cuda_emu;
  - Triton: the strided kernels of transxnet_ops/triton/_depthwise_kernels.py, in the interpreter on CPU;
  - CPU: the C++ kernels (NCHW inside) return channels_last outputs too.
Forward and every gradient vs the float64 reference, with odd H / W, channel counts that are not a multiple of
the 4-channel vectors, segments starting mid-vector, channel slices of a channels_last tensor (unaligned, batch
stride != C*H*W), grad_y in the other layout; outputs in x's layout (_fakes.activation_format, the rule of every
backend); bitwise-identical results under every emulated thread schedule / on reruns.
"""
import sys
from pathlib import Path

import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from transxnet_ops._fakes import activation_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_emu.build import build  # noqa: E402
from cuda_emu.testing import assert_schedule_independent, emulator_unavailable  # noqa: E402
from utils import rel_or_abs_err as rel_err  # noqa: E402

CL = torch.channels_last
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def grad_like(x):
    # mean 0.5: the weight/bias gradients (sums over B*H*W terms) stay well conditioned
    return (torch.randn(x.shape, dtype=x.dtype) + 0.5).contiguous(memory_format=CL)


def channel_slice(B, C, H, W, dtype, lead=3, trail=2):
    """x[:, lead:lead + C] of a channels_last (B, lead + C + trail, H, W): channels innermost, batch/row/pixel
    strides of the wider tensor, data pointer not 16-byte aligned."""
    full = torch.randn(B, lead + C + trail, H, W, dtype=dtype).contiguous(memory_format=CL)
    return full[:, lead:lead + C]


def idconv_inputs(B, C, H, W, K, dtype):
    x = torch.randn(B, C, H, W, dtype=dtype).contiguous(memory_format=CL)
    return x, torch.randn(B, C, K, K, dtype=dtype), torch.randn(B, C, dtype=dtype), grad_like(x)


def dwconv_inputs(B, splits, ks, H, W, dtype):
    C = sum(splits)
    x = torch.randn(B, C, H, W, dtype=dtype).contiguous(memory_format=CL)
    w = torch.randn(sum(c * k * k for c, k in zip(splits, ks)), dtype=dtype)
    return x, w, torch.randn(C, dtype=dtype), grad_like(x)


def idconv_expected(x, w, b, gy):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = reference.idconv(*leaves)
    return (y.detach(),) + torch.autograd.grad(y, leaves, gy.double())


def dwconv_expected(x, w, b, gy, splits, ks):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = reference.dwconv2d(*leaves, splits, ks)
    return (y.detach(),) + torch.autograd.grad(y, leaves, gy.double())


def assert_matches(got, expected, x, dtype):
    for g, e, name in zip(got, expected, ("y", "grad_x", "grad_weight", "grad_bias")):
        assert g.dtype == dtype and g.shape == e.shape, name
        err = rel_err(g, e)
        assert err < TOL[dtype], f"{name}: rel err {err:.2e}"
    y, grad_x = got[0], got[1]
    assert activation_format(x) == CL
    for name, t in (("y", y), ("grad_x", grad_x)):
        assert t.is_contiguous(memory_format=CL), f"{name} is not channels_last: strides {t.stride()}"


# (B, C, H, W, K): unrolled K (3, 7) with full vectors (C = 8, 16) and a partial last vector (C = 6, 10), odd
# sizes, a 1-row map, the run-time-k path (K = 9, 13), one sample with several row bands (fp32 partials).
IDCONV_CASES = [(2, 8, 7, 9, 3), (3, 6, 5, 7, 7), (2, 10, 9, 5, 7), (1, 16, 1, 11, 5), (2, 5, 6, 3, 9),
                (1, 3, 4, 5, 13), (1, 8, 23, 7, 7)]
# (B, splits, kernel sizes, H, W): MS-FFN 1/3/5/7 with segments starting mid-vector, aligned segments, a run-time
# k beside unrolled ones, batch chunks (B > 64: several samples per backward block, partial rows).
DWCONV_CASES = [(2, [5, 2, 2, 3], [1, 3, 5, 7], 5, 7), (2, [4, 4, 8, 4], [1, 3, 5, 7], 6, 9),
                (2, [3, 6], [3, 11], 7, 5), (70, [4, 3], [7, 3], 3, 5), (3, [9], [7], 1, 2)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def case_id(c):
    return "-".join(str(v).replace(" ", "") for v in c)


# ------------------------------------------------------------------------------------------ CUDA (emulated)
@pytest.fixture(scope="module")
def emu():
    if emulator_unavailable():
        pytest.skip(emulator_unavailable())
    lib = build()
    for family in ("idconv", "dwconv2d"):
        if family not in lib.families:
            pytest.skip(lib.missing[family])
    ops = torch.ops.transxnet_ops_emu
    ops.emu_configure("vary", 0)
    return ops


def emu_idconv(ops, x, w, b, gy):
    return (ops.idconv(x, w, b),) + tuple(ops.idconv_backward(gy, x, w))


def emu_dwconv(ops, x, w, b, gy, splits, ks):
    return (ops.dwconv2d(x, w, b, splits, ks),) + tuple(ops.dwconv2d_backward(gy, x, w, splits, ks, True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", IDCONV_CASES, ids=case_id)
def test_cuda_idconv_nhwc(emu, case, dtype):
    B, C, H, W, K = case
    x, w, b, gy = idconv_inputs(B, C, H, W, K, dtype)
    assert_matches(emu_idconv(emu, x, w, b, gy), idconv_expected(x, w, b, gy), x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DWCONV_CASES, ids=case_id)
def test_cuda_dwconv2d_nhwc(emu, case, dtype):
    B, splits, ks, H, W = case
    x, w, b, gy = dwconv_inputs(B, splits, ks, H, W, dtype)
    assert_matches(emu_dwconv(emu, x, w, b, gy, splits, ks), dwconv_expected(x, w, b, gy, splits, ks), x, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_channel_slice_and_nchw_grad_y(emu, dtype):
    """A channel slice of a channels_last tensor is read in place (scalar loads: unaligned); a contiguous grad_y
    is brought to x's layout."""
    x = channel_slice(2, 7, 5, 6, dtype)
    w, b = torch.randn(2, 7, 5, 5, dtype=dtype), torch.randn(2, 7, dtype=dtype)
    gy = torch.randn(x.shape, dtype=dtype) + 0.5  # NCHW-contiguous
    assert_matches(emu_idconv(emu, x, w, b, gy), idconv_expected(x, w, b, gy), x, dtype)
    splits, ks = [3, 4], [3, 7]
    w = torch.randn(3 * 9 + 4 * 49, dtype=dtype)
    b = torch.randn(7, dtype=dtype)
    assert_matches(emu_dwconv(emu, x, w, b, gy, splits, ks), dwconv_expected(x, w, b, gy, splits, ks), x, dtype)


def test_cuda_nchw_input_keeps_nchw_output(emu):
    x, w, b, gy = idconv_inputs(2, 6, 5, 7, 3, torch.float32)
    x, gy_cl = x.contiguous(), gy  # channels_last grad_y for an NCHW x is converted the other way
    got = emu_idconv(emu, x, w, b, gy_cl)
    assert got[0].is_contiguous() and got[1].is_contiguous()
    for g, e in zip(got, idconv_expected(x, w, b, gy_cl)):
        assert rel_err(g, e) < 1e-5


@pytest.mark.parametrize("op", ["idconv_row_bands", "dwconv_batch_chunks", "dwconv_generic_k"])
def test_cuda_nhwc_bitwise_identical_under_every_schedule(emu, op):
    if op == "idconv_row_bands":  # one sample: rows split into bands, per-sample weight gradient via partials
        args = idconv_inputs(1, 8, 23, 7, 7, torch.float32)
        run = lambda: emu_idconv(emu, *args)  # noqa: E731
    else:
        B, splits, ks = (70, [4, 3], [7, 3]) if op == "dwconv_batch_chunks" else (3, [5, 2], [9, 13])
        args = dwconv_inputs(B, splits, ks, 5, 6, torch.float32)
        run = lambda: emu_dwconv(emu, *args, splits, ks)  # noqa: E731
    assert_schedule_independent(emu, run)


# ------------------------------------------------------------------------------------ Triton (interpreter)
triton_only = pytest.mark.skipif("triton" not in transxnet_ops.available_backends("cpu"),
                                 reason="the Triton backend (interpreter) cannot run here")
TRITON_DTYPES = [torch.float64, torch.float32, torch.float16]  # numpy has no bfloat16: GPU-only
TRITON_IDCONV_CASES = [(2, 6, 5, 7, 3), (1, 10, 3, 9, 7), (1, 3, 4, 5, 11)]  # K = 11: the direct path
TRITON_DWCONV_CASES = [(2, [5, 2, 2, 3], [1, 3, 5, 7], 5, 7), (1, [3, 2], [3, 11], 4, 5)]


def triton_idconv(x, w, b, gy):
    ops = torch.ops.transxnet_ops
    return (ops.idconv_triton(x, w, b),) + tuple(ops.idconv_backward_triton(gy, x, w))


def triton_dwconv(x, w, b, gy, splits, ks):
    ops = torch.ops.transxnet_ops
    return ((ops.dwconv2d_triton(x, w, b, splits, ks),)
            + tuple(ops.dwconv2d_backward_triton(gy, x, w, splits, ks, True)))


@triton_only
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", TRITON_IDCONV_CASES, ids=case_id)
def test_triton_idconv_nhwc(case, dtype):
    B, C, H, W, K = case
    x, w, b, gy = idconv_inputs(B, C, H, W, K, dtype)
    assert_matches(triton_idconv(x, w, b, gy), idconv_expected(x, w, b, gy), x, dtype)


@triton_only
@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("case", TRITON_DWCONV_CASES, ids=case_id)
def test_triton_dwconv2d_nhwc(case, dtype):
    B, splits, ks, H, W = case
    x, w, b, gy = dwconv_inputs(B, splits, ks, H, W, dtype)
    assert_matches(triton_dwconv(x, w, b, gy, splits, ks), dwconv_expected(x, w, b, gy, splits, ks), x, dtype)


@triton_only
def test_triton_channel_slice_nchw_grad_y_and_determinism():
    x = channel_slice(2, 5, 4, 7, torch.float32)
    splits, ks = [2, 3], [3, 5]
    w, b = torch.randn(2 * 9 + 3 * 25), torch.randn(5)
    gy = torch.randn(x.shape) + 0.5  # NCHW-contiguous
    first = triton_dwconv(x, w, b, gy, splits, ks)
    assert_matches(first, dwconv_expected(x, w, b, gy, splits, ks), x, torch.float32)
    for a, c in zip(first, triton_dwconv(x, w, b, gy, splits, ks)):
        assert torch.equal(a.view(torch.int32), c.view(torch.int32))


@triton_only
def test_triton_gradcheck_and_opcheck_channels_last():
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    f = lambda *a: transxnet_ops.idconv(*a, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=True)
    # the fake's output layout (channels_last) agrees with the kernels'
    torch.library.opcheck(torch.ops.transxnet_ops.idconv_triton.default, (x.detach(), w.detach(), b.detach()),
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------------------ CPU (C++)
@pytest.mark.skipif("cpu" not in transxnet_ops.available_backends("cpu"), reason="the C++ extension is not built")
def test_cpu_outputs_follow_x_layout():
    x, w, b, gy = dwconv_inputs(2, [3, 2], [3, 5], 5, 6, torch.float32)
    ops = torch.ops.transxnet_ops
    got = (ops.dwconv2d(x, w, b, [3, 2], [3, 5]),) + tuple(ops.dwconv2d_backward(gy, x, w, [3, 2], [3, 5], True))
    assert_matches(got, dwconv_expected(x, w, b, gy, [3, 2], [3, 5]), x, torch.float32)
    torch.library.opcheck(ops.dwconv2d.default, (x, w, b, [3, 2], [3, 5]),
                          test_utils=("test_schema", "test_faketensor"))
