"""transxnet_ops.osra_attention on every backend available here vs the float64 reference."""
import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from utils import HAS_CUDA, TOL, backend_device_pairs, rel_err

PAIRS = backend_device_pairs()

# (B, H, N, M, D): TransXNet-like head dims, N or M = 1, sizes that are no multiple of any block.
SHAPES = [(2, 1, 64, 49, 24), (1, 2, 1, 7, 16), (2, 2, 33, 1, 16), (1, 3, 70, 17, 64), (2, 1, 5, 130, 32)]
# bias shapes relative to (B, H, N, M); None = no bias
BIAS_KINDS = [None, "1HNM", "BHNM", "11NM", "HNM", "1H1M"]


def bias_shape(kind, B, H, N, M):
    return {"1HNM": (1, H, N, M), "BHNM": (B, H, N, M), "11NM": (1, 1, N, M),
            "HNM": (H, N, M), "1H1M": (1, H, 1, M)}[kind]


def make_inputs(B, H, N, M, D, dtype, device, bias_kind="1HNM", requires_grad=False):
    make = lambda *s: (torch.randn(*s, device=device, dtype=dtype)).requires_grad_(requires_grad)  # noqa: E731
    q, k, v = make(B, H, N, D), make(B, H, M, D), make(B, H, M, D)
    bias = make(*bias_shape(bias_kind, B, H, N, M)) if bias_kind else None
    return q, k, v, bias


def expected(q, k, v, bias, scale=None):
    return reference.osra_attention(q.double(), k.double(), v.double(),
                                    None if bias is None else bias.double(), scale)


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered on GPU")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_forward_matches_reference(backend, device, shape, dtype):
    skip_unsupported(backend, device, dtype)
    q, k, v, bias = make_inputs(*shape, dtype, device)
    out = transxnet_ops.osra_attention(q, k, v, bias, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_err(out, expected(q, k, v, bias)) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("bias_kind", BIAS_KINDS)
def test_bias_broadcasting_and_scale(backend, device, bias_kind):
    q, k, v, bias = make_inputs(2, 2, 9, 5, 16, torch.float32, device, bias_kind)
    out = transxnet_ops.osra_attention(q, k, v, bias, scale=0.3, backend=backend)
    assert rel_err(out, expected(q, k, v, bias, 0.3)) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
def test_non_contiguous_inputs(backend, device):
    """The model passes q as a transposed view of a conv output."""
    B, H, N, M, D = 2, 2, 12, 6, 16
    q = torch.randn(B, H, D, N, device=device).transpose(-1, -2)
    k = torch.randn(B, H, M, 2 * D, device=device)[..., ::2]
    v = torch.randn(B, M, H, D, device=device).transpose(1, 2)
    bias = torch.randn(1, H, M, N, device=device).transpose(-1, -2)
    out = transxnet_ops.osra_attention(q, k, v, bias, backend=backend)
    assert rel_err(out, expected(q, k, v, bias)) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("bias_kind", [None, "1HNM", "BHNM", "11NM"])
def test_gradcheck_float64(backend, device, bias_kind):
    inputs = make_inputs(2, 2, 5, 3, 4, torch.float64, device, bias_kind, requires_grad=True)
    fn = lambda q, k, v, b: transxnet_ops.osra_attention(q, k, v, b, backend=backend)  # noqa: E731
    # The Triton interpreter costs ~1 s a launch: the full Jacobian there only for the model's bias form, random
    # directional derivatives (fast mode) for the others; the full Jacobian everywhere else.
    fast = backend == "triton" and device == "cpu" and bias_kind != "1HNM"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_reference(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    q, k, v, bias = make_inputs(3, 2, 40, 21, 24, dtype, device, "1HNM", requires_grad=True)
    grad_out = torch.randn_like(q)
    torch.autograd.backward(transxnet_ops.osra_attention(q, k, v, bias, backend=backend), grad_out)
    refs = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    torch.autograd.backward(reference.osra_attention(*refs), grad_out.double())
    for got, ref in zip((q, k, v, bias), refs):
        assert rel_err(got.grad, ref.grad) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_bias_without_grad(backend, device):
    q, k, v, bias = make_inputs(2, 1, 6, 4, 16, torch.float32, device, requires_grad=True)
    bias = bias.detach()
    transxnet_ops.osra_attention(q, k, v, bias, backend=backend).sum().backward()
    refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    reference.osra_attention(*refs, bias.double()).sum().backward()
    for got, ref in zip((q, k, v), refs):
        assert rel_err(got.grad, ref.grad) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(torch.ops.transxnet_ops, "osra_attention" + suffix)
    bwd = getattr(torch.ops.transxnet_ops, "osra_attention_backward" + suffix)
    for bias_kind, dtype in [("1HNM", torch.float32), (None, torch.float64), ("BHNM", torch.float32)]:
        q, k, v, bias = make_inputs(2, 2, 7, 5, 16, dtype, device, bias_kind, requires_grad=True)
        torch.library.opcheck(fwd, (q, k, v, bias, 0.25))
        out, lse = fwd(q, k, v, bias, 0.25)
        args = (torch.randn_like(q), q.detach(), k.detach(), v.detach(),
                None if bias is None else bias.detach(), out.detach(), lse, 0.25, bias is not None)
        torch.library.opcheck(bwd, args)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_detection_size_gpu(backend):
    """N = 128*128 queries, M = 1024 keys (sr=4 at 512px), bias shared over the batch."""
    q, k, v, bias = make_inputs(2, 2, 128 * 128, 1024, 32, torch.bfloat16, "cuda", requires_grad=True)
    out = transxnet_ops.osra_attention(q, k, v, bias, backend=backend)
    assert rel_err(out, expected(q, k, v, bias)) < 1e-2
    out.sum().backward()
    assert torch.isfinite(bias.grad).all()
