"""The depthwise CUDA kernel family (csrc/depthwise/, behind idconv and dwconv2d) on the CPU emulator of
tests/cuda_emu, on the paths of its planner that the generic op tests do not reach: the run-time-k code (k = 9..31),
planes split into several block regions (fp32 partials of the per-sample weight gradient), static-weight batch
chunks of several samples per block, more than 8 segments (several launches), empty segments, no bias. Every
output and gradient vs the float64 reference; bitwise identical under every thread schedule.
"""
import sys
from pathlib import Path

import pytest
import torch

from transxnet_ops import reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_emu.build import build  # noqa: E402
from cuda_emu.testing import assert_schedule_independent, requires_emulator  # noqa: E402
from utils import rel_or_abs_err as rel_err  # noqa: E402

pytestmark = requires_emulator

ops = torch.ops.transxnet_ops_emu
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module", autouse=True)
def emu():
    lib = build()
    for family in ("idconv", "dwconv2d"):
        if family not in lib.families:
            pytest.skip(lib.missing[family])
    ops.emu_configure("vary", 0)
    return lib


def idconv_all(x, w, b, gy):
    return (ops.idconv(x, w, b),) + tuple(ops.idconv_backward(gy, x, w))


def idconv_expected(x, w, b, gy):
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y = reference.idconv(x64, w64, b64)
    return (y.detach(),) + torch.autograd.grad(y, (x64, w64, b64), gy.double())


def dwconv_all(x, w, b, gy, splits, ks, bias_grad=True):
    return (ops.dwconv2d(x, w, b, splits, ks),) + tuple(ops.dwconv2d_backward(gy, x, w, splits, ks, bias_grad))


def dwconv_expected(x, w, b, gy, splits, ks):
    nonempty = [(c, k) for c, k in zip(splits, ks) if c > 0]  # the reference takes no empty segment
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    y = reference.dwconv2d(x64, w64, b64, [c for c, _ in nonempty], [k for _, k in nonempty])
    wrt = (x64, w64) + (() if b64 is None else (b64,))
    return (y.detach(),) + torch.autograd.grad(y, wrt, gy.double())


def grad_like(x):
    # a mean of 0.5: bias/weight gradients summed over ~10^4 terms stay well conditioned (a zero-mean sum may cancel
    # to ~1 and turn fp32 rounding into a large relative error)
    return torch.randn_like(x) + 0.5


def dwconv_inputs(B, splits, ks, H, W, dtype, bias=True):
    C = sum(splits)
    x = torch.randn(B, C, H, W, dtype=dtype)
    w = torch.randn(sum(c * k * k for c, k in zip(splits, ks)), dtype=dtype)
    return x, w, (torch.randn(C, dtype=dtype) if bias else None), grad_like(x)


# (B, C, H, W, K): run-time k; planes of more than 256 thread tiles (7x4 outputs each) split into block regions:
# 40x200 by columns (6 x 50 tiles -> 4 regions), 130x64 by rows (19 x 16 -> 2), 150x140 both (22 x 35 -> 2 x 3);
# K = 31 over a split plane.
IDCONV_CASES = [(1, 3, 6, 11, 9), (1, 2, 5, 9, 31), (1, 1, 40, 200, 5), (1, 1, 130, 64, 7), (1, 1, 150, 140, 3),
                (1, 1, 40, 200, 31)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", IDCONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_idconv_planner_paths(case, dtype):
    B, C, H, W, K = case
    x = torch.randn(B, C, H, W, dtype=dtype)
    gy = grad_like(x)
    w, b = torch.randn(B, C, K, K, dtype=dtype), torch.randn(B, C, dtype=dtype)
    for got, exp, name in zip(idconv_all(x, w, b, gy), idconv_expected(x, w, b, gy), ("y", "gx", "gw", "gb")):
        assert got.dtype == dtype and got.shape == exp.shape, name
        assert rel_err(got, exp) < TOL[dtype], name


# (B, splits, kernel sizes, H, W): run-time k next to compile-time k in one launch, an empty segment, 10 segments
# (two launches), batch chunks of 2 samples per block (B > 64), a plane split into row regions with k = 31.
DWCONV_CASES = [
    (4, [2, 0, 3], [3, 5, 9], 6, 5),
    (2, [1, 1, 1, 1, 1, 1, 1, 1, 1, 2], [1, 3, 5, 7, 9, 11, 3, 1, 5, 7], 5, 6),
    (70, [2, 1, 1], [3, 7, 1], 3, 5),
    (67, [1, 1], [9, 5], 4, 4),
    (2, [1, 1], [7, 31], 130, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", DWCONV_CASES, ids=lambda c: f"B{c[0]}-{c[1]}-k{c[2]}-{c[3]}x{c[4]}")
def test_dwconv2d_planner_paths(case, dtype):
    B, splits, ks, H, W = case
    x, w, b, gy = dwconv_inputs(B, splits, ks, H, W, dtype)
    for got, exp, name in zip(dwconv_all(x, w, b, gy, splits, ks), dwconv_expected(x, w, b, gy, splits, ks),
                              ("y", "gx", "gw", "gb")):
        assert got.dtype == dtype and got.shape == exp.shape, name
        assert rel_err(got, exp) < TOL[dtype], name


def test_dwconv2d_without_bias():
    x, w, _, gy = dwconv_inputs(66, [3, 2], [3, 9], 6, 7, torch.float32, bias=False)
    y, gx, gw, gb = dwconv_all(x, w, None, gy, [3, 2], [3, 9], bias_grad=False)
    y_exp, gx_exp, gw_exp = dwconv_expected(x, w, None, gy, [3, 2], [3, 9])
    assert gb.numel() == 0
    for got, exp in ((y, y_exp), (gx, gx_exp), (gw, gw_exp)):
        assert rel_err(got, exp) < 1e-5


@pytest.mark.parametrize("op", ["idconv_regions", "dwconv_batch_chunks", "dwconv_generic_k"])
def test_bitwise_identical_under_every_schedule(op):
    if op == "idconv_regions":
        x = torch.randn(1, 2, 130, 64)
        args = (x, torch.randn(1, 2, 7, 7), torch.randn(1, 2), torch.randn_like(x))
        run = lambda: idconv_all(*args)  # noqa: E731
    else:
        B, splits, ks = (70, [2, 1], [3, 7]) if op == "dwconv_batch_chunks" else (3, [2, 1], [9, 13])
        inputs = dwconv_inputs(B, splits, ks, 5, 6, torch.float32)
        run = lambda: dwconv_all(*inputs, splits, ks)  # noqa: E731
    assert_schedule_independent(ops, run)
