"""CUDA attention paths that tests/test_cuda_emu.py's shapes do not reach, run through the CPU emulator: the
forward's online softmax over several key chunks, the backward's key chunks with the separate dq kernel, head dims
of 128 and odd ones, query chunks of two tiles, and inputs that start at odd element offsets (scalar copy paths).
Every output and gradient against the float64 reference.
"""
import sys
from pathlib import Path

import pytest
import torch

from transxnet_ops import reference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_emu.build import build  # noqa: E402
from cuda_emu.testing import requires_emulator  # noqa: E402

pytestmark = requires_emulator

ops = torch.ops.transxnet_ops_emu
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def emu():
    lib = build()
    if "osra_attention" not in lib.families:
        pytest.skip("no CUDA attention binding in csrc")
    return lib


def err(actual, expected):
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "NaN/inf in the result (an element the kernel never wrote?)"
    if expected.norm() < 1e-6:
        return (actual - expected).abs().max().item()
    return ((actual - expected).norm() / expected.norm()).item()


def at_odd_offset(t):
    """A contiguous copy of t that starts one element into its storage."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    buf[1:] = t.reshape(-1)
    return buf[1:].view(t.shape)


def check(B, h, N, M, d, bias_shape, dtype, shift=False):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, h, n, d, dtype=dtype) for n in (N, M, M))
    bias = None if bias_shape is None else torch.randn(*bias_shape, dtype=dtype)
    grad_out = torch.randn(B, h, N, d, dtype=dtype)
    if shift:
        q, k, v, bias, grad_out = (None if t is None else at_odd_offset(t) for t in (q, k, v, bias, grad_out))
    scale = d ** -0.5
    out, lse = ops.osra_attention(q, k, v, bias, scale)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, scale, bias is not None)
    leaves = [t.double().requires_grad_() for t in (q, k, v) + (() if bias is None else (bias,))]
    expected = reference.osra_attention(*leaves[:3], leaves[3] if bias is not None else None, scale)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.double())
    assert err(out, expected) < TOL[dtype], "out"
    for got, exp, name in zip(grads, expected_grads, ("grad_q", "grad_k", "grad_v", "grad_bias")):
        assert got.dtype == dtype and got.shape == exp.shape, name
        assert err(got, exp) < TOL[dtype], name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B,h,N,M,d,bias", [
    (1, 1, 70, 300, 24, (1, 1, 70, 300)),   # forward: online softmax over 3 chunks; backward: 5 key chunks + dq kernel
    (2, 1, 40, 64, 128, (2, 1, 40, 64)),    # d = 128: fp32 forward in key chunks of 16 (shared memory); backward too
    (1, 1, 20, 1024, 32, (1, 1, 20, 1024)),  # a detection-sized key set
], ids=["M300", "d128", "M1024"])
def test_key_chunks(emu, B, h, N, M, d, bias, dtype):
    check(B, h, N, M, d, bias, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_odd_head_dims(emu, dtype):  # TransXNet-B: 19 and 21
    check(2, 2, 150, 49, 19, (1, 2, 150, 49), dtype)
    check(2, 1, 70, 49, 21, (2, 1, 70, 49), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_inputs_at_odd_offsets(emu, dtype):
    check(2, 2, 77, 49, 24, (1, 2, 77, 49), dtype, shift=True)


def test_query_chunks_of_two_tiles(emu):
    """A grid large enough that each backward block keeps the dbias of two query tiles (planned on the emulator's
    132-SM device: 2 tiles x 2 batches per block)."""
    check(200, 1, 256, 16, 64, (1, 1, 256, 16), torch.float32)
