"""Triton static / multi-scale depthwise kernels (transxnet_ops/triton/dwconv.py over _depthwise_kernels.py) called
directly: parity of y, grad_x, grad_weight and grad_bias with the float64 reference on NaN-poisoned outputs and
partial buffers, single segments K = 1..11 (both paths), MS-FFN's 1/3/5/7 with uneven splits in one launch, more
than four segments (two launches), chunks of samples per program, determinism, float64 gradcheck, opcheck and
torch.compile. On a machine without a GPU they run in the Triton interpreter: small shapes."""
import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from utils import HAS_CUDA, TOL, check_compiled, rel_err

DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = pytest.mark.skipif("triton" not in transxnet_ops.available_backends(DEVICE),
                                reason="the Triton backend cannot run here")

DTYPES = [torch.float64, torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

# (B, H, W, split_sizes, kernel_sizes)
CASES = {
    "k1": (2, 3, 5, [3], [1]),
    "k3": (2, 5, 6, [3], [3]),
    "k5-HltK": (1, 3, 4, [2], [5]),
    "k7-B1-C1": (1, 6, 5, [1], [7]),
    "k9": (2, 4, 9, [2], [9]),  # largest register-window K; W = 9: two columns per thread
    "k11-direct": (1, 5, 3, [2], [11]),
    "msffn": (2, 5, 7, [5, 1, 2, 3], [1, 3, 5, 7]),  # uneven splits, first takes the remainder
    "msffn-wide": (1, 3, 20, [3, 2, 2, 2], [1, 3, 5, 7]),  # several columns per thread, ragged
    "six-segments": (2, 4, 3, [1, 2, 1, 1, 2, 1], [3, 1, 7, 5, 3, 9]),  # two register-window launches
    "mixed-direct": (1, 4, 6, [2, 1, 3], [3, 13, 5]),
}


def _inputs(B, H, W, splits, ks, dtype, requires_grad=False):
    C, taps = sum(splits), sum(c * k * k for c, k in zip(splits, ks))
    make = lambda *s: torch.randn(*s, device=DEVICE, dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return make(B, C, H, W), make(taps), make(C)


def _reference_grads(x, w, b, grad_y, splits, ks):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = reference.dwconv2d(*leaves, splits, ks)
    y.backward(grad_y.double())
    return y.detach(), [t.grad for t in leaves]


def _ops():
    return torch.ops.transxnet_ops.dwconv2d_triton, torch.ops.transxnet_ops.dwconv2d_backward_triton


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_match_reference_and_write_every_element(case, dtype):
    """Outputs and the grad_weight partial buffer start as NaN: any element no program writes shows up."""
    from transxnet_ops.triton import _depthwise_launch as dw

    B, H, W, splits, ks = CASES[case]
    x, w, b = _inputs(B, H, W, splits, ks, dtype)
    grad_y = torch.randn_like(x)
    y_ref, (gx_ref, gw_ref, gb_ref) = _reference_grads(x, w, b, grad_y, splits, ks)
    segments = dw.segments_of(splits, ks)
    nan = lambda t: torch.full_like(t, float("nan"))  # noqa: E731

    y = nan(x)
    dw.forward(x, w, b, y, segments, per_sample=False)
    grad_x, grad_w, grad_b = nan(x), nan(w), nan(b)
    _, n_chunks = dw.chunking(x, segments, per_sample=False)
    partial = dw.partial_buffer(x, w.numel(), n_chunks).fill_(float("nan"))
    dw.backward(grad_y, x, w, grad_x, grad_w, grad_b, segments, per_sample=False, partial=partial)

    tol = TOL[dtype]
    assert rel_err(y, y_ref) < tol
    assert rel_err(grad_x, gx_ref) < tol
    assert rel_err(grad_w, gw_ref) < tol
    assert rel_err(grad_b, gb_ref) < tol


def test_sample_chunks(monkeypatch):
    """Several samples per program (static weights reuse their taps; grad_weight partials per chunk): force
    chunks of 2 with a ragged last one, and compare with one sample per program."""
    from transxnet_ops.triton import _depthwise_launch as dw

    fwd, bwd = _ops()
    splits, ks = [2, 1], [3, 7]
    x, w, b = _inputs(5, 4, 5, splits, ks, torch.float64)
    grad_y = torch.randn_like(x)
    y_ref, grads_ref = _reference_grads(x, w, b, grad_y, splits, ks)
    monkeypatch.setattr(dw, "TARGET_PROGRAMS", 1)  # any chunk keeps >= 1 program
    monkeypatch.setattr(dw, "MAX_SAMPLES_PER_PROGRAM", 2)
    assert dw.chunking(x, dw.segments_of(splits, ks), per_sample=False) == (2, 3)
    assert rel_err(fwd(x, w, b, splits, ks), y_ref) < TOL[torch.float64]
    for got, ref in zip(bwd(grad_y, x, w, splits, ks, True), grads_ref):
        assert rel_err(got, ref) < TOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_ops_contract(dtype):
    """Outputs dense in the input's memory format (channels_last in, channels_last out, as nn.Conv2d) and dtype;
    bias optional; grad_bias (C,) or empty (0,); strided inputs."""
    fwd, bwd = _ops()
    splits, ks = [3, 2], [5, 3]
    x, w, b = _inputs(2, 6, 5, splits, ks, dtype)
    x_cl = x.to(memory_format=torch.channels_last)
    w_strided = torch.stack([w, w], 1)[:, 0]  # same values, stride 2
    for bias in (b, None):
        y = fwd(x_cl, w_strided, bias, splits, ks)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype and y.device == x.device
        ref = reference.dwconv2d(x.double(), w.double(), None if bias is None else bias.double(), splits, ks)
        assert rel_err(y, ref) < TOL[dtype]
    grad_y = torch.randn_like(x).to(memory_format=torch.channels_last)
    for bias_grad in (True, False):
        grad_x, grad_w, grad_b = bwd(grad_y, x_cl, w_strided, splits, ks, bias_grad)
        assert grad_x.shape == x.shape and grad_x.is_contiguous(memory_format=torch.channels_last) and grad_x.dtype == dtype
        assert grad_w.shape == w.shape and grad_w.dtype == dtype
        assert grad_b.shape == ((x.shape[1],) if bias_grad else (0,)) and grad_b.dtype == dtype
    _, (gx_ref, gw_ref, gb_ref) = _reference_grads(x, w, b, grad_y, splits, ks)
    assert rel_err(grad_x, gx_ref) < TOL[dtype] and rel_err(grad_w, gw_ref) < TOL[dtype]


@pytest.mark.parametrize("case", ["k3", "msffn"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(case, with_bias):
    fwd, _ = _ops()
    B, H, W, splits, ks = CASES[case]
    x, w, b = _inputs(B, H, W, splits, ks, torch.float64, requires_grad=True)
    fn = lambda x, w, b: fwd(x, w, b, splits, ks)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b if with_bias else None), eps=1e-6, atol=1e-8, rtol=1e-6,
                                    fast_mode=True)


@pytest.mark.parametrize("case", ["msffn", "mixed-direct"])
def test_backward_is_deterministic(case):
    """grad_weight/grad_bias: fp32 partials per sample chunk summed in a fixed order, no atomics."""
    _, bwd = _ops()
    B, H, W, splits, ks = CASES[case]
    x, w, _ = _inputs(2, H, W, splits, ks, torch.float32)
    grad_y = torch.randn_like(x)
    first = bwd(grad_y, x, w, splits, ks, True)
    second = bwd(grad_y, x, w, splits, ks, True)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 3, 0, 4)], ids=["B0", "H0"])
def test_empty_inputs(shape):
    fwd, bwd = _ops()
    splits, ks = [2, 1], [3, 5]
    x = torch.randn(*shape, device=DEVICE)
    w = torch.randn(2 * 9 + 25, device=DEVICE)
    b = torch.randn(3, device=DEVICE)
    assert fwd(x, w, b, splits, ks).shape == x.shape
    grad_x, grad_w, grad_b = bwd(torch.randn_like(x), x, w, splits, ks, True)
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros_like(w)) and torch.equal(grad_b, torch.zeros_like(b))


@pytest.mark.parametrize("dtype,with_bias", [(torch.float32, True), (torch.float64, False)], ids=["f32", "f64-nobias"])
def test_opcheck(dtype, with_bias):
    """Schema, fake (meta) impl vs real, autograd registration (ops.py) and dispatch of both ops."""
    fwd, bwd = _ops()
    splits, ks = [2, 1], [3, 1]
    x, w, b = _inputs(2, 4, 3, splits, ks, dtype, requires_grad=True)
    torch.library.opcheck(fwd, (x, w, b if with_bias else None, splits, ks))
    torch.library.opcheck(bwd, (torch.randn_like(x), x.detach(), w.detach(), splits, ks, with_bias))


@pytest.mark.parametrize("compile_backend", ["aot_eager"] + (["inductor"] if HAS_CUDA else []))
def test_compile_fullgraph(compile_backend):
    fwd, _ = _ops()
    splits, ks = [1, 1, 1, 1], [1, 3, 5, 7]
    fn = lambda x, w, b: torch.nn.functional.gelu(fwd(x, w, b, splits, ks)) * 2  # noqa: E731
    check_compiled(fn, _inputs(2, 5, 4, splits, ks, torch.float32, requires_grad=True), compile_backend)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_large_tensor_int64_offsets_gpu():
    """B*C*H*W > 2**31 elements (fp16: 4.5 GB): plane offsets must be 64-bit. Only the last planes are checked."""
    fwd, _ = _ops()
    B, C, H, W = 1, 700, 1792, 1792
    x = torch.randn(B, C, H, W, device="cuda", dtype=torch.float16)
    w = torch.randn(C * 9, device="cuda", dtype=torch.float16)
    y = fwd(x, w, None, [C], [3])
    tail = slice(C - 2, C)
    expected = reference.dwconv2d(x[:, tail].double(), w[-2 * 9:].double(), None, [2], [3])
    assert rel_err(y[:, tail], expected) < 1e-2
