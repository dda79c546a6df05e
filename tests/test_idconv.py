"""transxnet_ops.idconv on every backend available here vs the float64 reference."""
import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from utils import HAS_CUDA, TOL, backend_device_pairs, rel_err

PAIRS = backend_device_pairs()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (B, C, H, W, K): TransXNet's K=7, H/W smaller than K, H != W, odd sizes, B=1, C=1, K=1.
SHAPES = [(2, 3, 8, 8, 3), (1, 1, 5, 7, 5), (2, 4, 9, 6, 7), (1, 2, 3, 2, 7), (2, 1, 4, 5, 1), (1, 3, 6, 11, 9)]


def make_inputs(B, C, H, W, K, dtype, device, with_bias=True, requires_grad=False):
    x = torch.randn(B, C, H, W, device=device, dtype=dtype, requires_grad=requires_grad)
    w = torch.randn(B, C, K, K, device=device, dtype=dtype, requires_grad=requires_grad)
    b = torch.randn(B, C, device=device, dtype=dtype, requires_grad=requires_grad) if with_bias else None
    return x, w, b


def expected(x, w, b):
    return reference.idconv(x.double(), w.double(), None if b is None else b.double())


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered on GPU")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(backend, device, shape, dtype):
    skip_unsupported(backend, device, dtype)
    x, w, b = make_inputs(*shape, dtype, device)
    y = transxnet_ops.idconv(x, w, b, backend=backend)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert rel_err(y, expected(x, w, b)) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_forward_without_bias(backend, device):
    x, w, _ = make_inputs(2, 3, 7, 6, 5, torch.float32, device)
    assert rel_err(transxnet_ops.idconv(x, w, None, backend=backend), expected(x, w, None)) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_memory_layouts(backend, device, layout):
    x, w, b = make_inputs(2, 4, 9, 9, 3, torch.float32, device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 8, 9, 12, device=device)[:, ::2, :, 1:10]
        w = torch.randn(2, 4, 6, 3, device=device)[:, :, ::2].transpose(2, 3)
    else:
        x = x.transpose(2, 3)
    assert not x.is_contiguous()
    y = transxnet_ops.idconv(x, w, b, backend=backend)
    assert rel_err(y, expected(x, w, b)) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(backend, device, with_bias):
    inputs = make_inputs(2, 2, 5, 4, 3, torch.float64, device, with_bias, requires_grad=True)
    fn = lambda x, w, b: transxnet_ops.idconv(x, w, b, backend=backend)  # noqa: E731
    # The Triton interpreter costs ~1 s a launch: random directional derivatives there (fast mode; the full
    # Jacobian of a tiny case is checked in tests/test_triton_idconv.py), the full Jacobian elsewhere.
    fast = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_reference(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    x, w, b = make_inputs(2, 3, 10, 7, 7, dtype, device, requires_grad=True)
    grad_y = torch.randn_like(x)
    torch.autograd.backward(transxnet_ops.idconv(x, w, b, backend=backend), grad_y)
    refs = [t.detach().double().requires_grad_() for t in (x, w, b)]
    torch.autograd.backward(reference.idconv(*refs), grad_y.double())
    for got, ref in zip((x, w, b), refs):
        assert rel_err(got.grad, ref.grad) < TOL[dtype]


def _opcheck_samples(device):
    return [make_inputs(2, 3, 6, 5, 3, torch.float32, device, requires_grad=True),
            make_inputs(1, 2, 4, 4, 5, torch.float64, device, with_bias=False, requires_grad=True)]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    op = getattr(torch.ops.transxnet_ops, "idconv" + suffix)
    for x, w, b in _opcheck_samples(device):
        torch.library.opcheck(op, (x, w, b))
        grad_y = torch.randn_like(x)
        bwd = getattr(torch.ops.transxnet_ops, "idconv_backward" + suffix)
        torch.library.opcheck(bwd, (grad_y, x.detach(), w.detach()))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_large_plane_count_gpu(backend):
    """Many planes and a big map: catches 32-bit offset and grid-limit bugs."""
    x, w, b = make_inputs(128, 112, 56, 56, 7, torch.bfloat16, "cuda")
    assert rel_err(transxnet_ops.idconv(x, w, b, backend=backend), expected(x, w, b)) < 1e-2
