"""Triton IDConv kernels (transxnet_ops/triton/idconv.py over the depthwise family of _depthwise_kernels.py)
called directly: every output element written, column tiles and thread column runs, both paths (register window
K <= 9, direct K > 9), float64 gradcheck, determinism, empty inputs, opcheck and torch.compile.
On a machine without a GPU they run in the Triton interpreter (conftest sets TRITON_INTERPRET=1): small shapes."""
import pytest
import torch

import transxnet_ops
from transxnet_ops import reference
from utils import HAS_CUDA, TOL, check_compiled, rel_err

DEVICE = "cuda" if HAS_CUDA else "cpu"
pytestmark = pytest.mark.skipif("triton" not in transxnet_ops.available_backends(DEVICE),
                                reason="the Triton backend cannot run here")

# The interpreter uses numpy: no bfloat16 there.
DTYPES = [torch.float64, torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])

# (B, C, H, W, K): K = 1..15 (9 is the largest register-window K, 11-15 take the direct path); H or W < K;
# B = 1, C = 1; H != W; C not a multiple of the 4 planes per program at W <= 8; W = 9: two columns per thread;
# W = 70: 16 lanes x 5 columns, ragged; W = 150 at K = 7: two 128-column row segments in backward; W = 260: two
# 256-column segments; 18 x 13: two 16 x 16 direct tiles, ragged.
SHAPES = [(2, 3, 5, 6, 3), (1, 1, 1, 1, 1), (1, 1, 2, 3, 7), (2, 5, 4, 9, 5), (1, 2, 6, 5, 9), (1, 2, 9, 4, 13),
          (1, 1, 37, 70, 3), (1, 1, 2, 150, 7), (1, 1, 1, 260, 3), (1, 1, 3, 5, 15), (1, 1, 18, 13, 11)]


def _ops():
    return torch.ops.transxnet_ops.idconv_triton, torch.ops.transxnet_ops.idconv_backward_triton


def _inputs(B, C, H, W, K, dtype, requires_grad=False):
    make = lambda *s: torch.randn(*s, device=DEVICE, dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return make(B, C, H, W), make(B, C, K, K), make(B, C)


def _reference_grads(x, w, b, grad_y):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y = reference.idconv(*leaves)
    y.backward(grad_y.double())
    return y.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kernels_match_reference_and_write_every_element(shape, dtype):
    """The launchers fill NaN-initialised outputs: a missed plane, column, row or tap shows up."""
    from transxnet_ops.triton import _depthwise_launch as dw

    x, w, b = _inputs(*shape, dtype)
    grad_y = torch.randn_like(x)
    y_ref, (gx_ref, gw_ref, gb_ref) = _reference_grads(x, w, b, grad_y)
    nan = lambda t: torch.full_like(t, float("nan"))  # noqa: E731
    segments = dw.segments_of([x.shape[1]], [w.shape[-1]])

    y = nan(x)
    dw.forward(x, w, b, y, segments, per_sample=True)
    grad_x, grad_w, grad_b = nan(x), nan(w), nan(b)
    dw.backward(grad_y, x, w, grad_x, grad_w, grad_b, segments, per_sample=True)

    tol = TOL[dtype]
    assert rel_err(y, y_ref) < tol
    assert rel_err(grad_x, gx_ref) < tol
    assert rel_err(grad_w, gw_ref) < tol
    assert rel_err(grad_b, gb_ref) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_ops_contract(dtype):
    """Outputs dense in x's memory format (channels_last in, channels_last out, as nn.Conv2d; weight/bias grads
    contiguous), input dtype and device; bias optional; grad_bias always returned; strided inputs."""
    fwd, bwd = _ops()
    x, w, b = _inputs(2, 3, 7, 6, 5, dtype)
    x_cl = x.to(memory_format=torch.channels_last)
    w_t = w.transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous
    for bias in (b, None):
        y = fwd(x_cl, w_t, bias)
        assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == dtype and y.device == x.device
        ref = reference.idconv(x.double(), w.double(), None if bias is None else bias.double())
        assert rel_err(y, ref) < TOL[dtype]
    grad_y = torch.randn_like(x).to(memory_format=torch.channels_last)
    outs = bwd(grad_y, x_cl, w_t)
    for out, like, layout in zip(outs, (x, w, b), (torch.channels_last, torch.contiguous_format, torch.contiguous_format)):
        assert out.shape == like.shape and out.dtype == dtype and out.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("shape,fast_mode", [((2, 3, 5, 6, 3), True), ((1, 1, 4, 3, 3), False)],
                         ids=["2x3x5x6x3-fast", "1x1x4x3x3-full"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(shape, fast_mode, with_bias):
    """Full gradcheck costs ~2 kernel launches per input element, slow in the interpreter: the larger shape
    uses fast_mode (random projections of the Jacobian), the tiny one checks every entry."""
    fwd, _ = _ops()
    x, w, b = _inputs(*shape, torch.float64, requires_grad=True)
    inputs = (x, w, b if with_bias else None)
    assert torch.autograd.gradcheck(fwd, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=fast_mode)


@pytest.mark.parametrize("shape", [(1, 2, 37, 70, 3), (1, 1, 6, 20, 11)], ids=["window", "direct"])
def test_backward_is_deterministic(shape):
    """The program that owns a plane reduces its grad_weight/grad_bias in a fixed order: bitwise reproducible."""
    _, bwd = _ops()
    x, w, _ = _inputs(*shape, torch.float32)
    grad_y = torch.randn_like(x)
    first = bwd(grad_y, x, w)
    second = bwd(grad_y, x, w)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 3, 0, 4)], ids=["B0", "H0"])
def test_empty_inputs(shape):
    fwd, bwd = _ops()
    x = torch.randn(*shape, device=DEVICE)
    w = torch.randn(*shape[:2], 3, 3, device=DEVICE)
    b = torch.randn(*shape[:2], device=DEVICE)
    assert fwd(x, w, b).shape == x.shape
    grad_x, grad_w, grad_b = bwd(torch.randn_like(x), x, w)
    assert grad_x.shape == x.shape
    assert torch.equal(grad_w, torch.zeros_like(w)) and torch.equal(grad_b, torch.zeros_like(b))


@pytest.mark.parametrize("dtype,with_bias", [(torch.float32, True), (torch.float64, False)], ids=["f32", "f64-nobias"])
def test_opcheck(dtype, with_bias):
    """Schema, fake (meta) impl vs real, autograd registration (ops.py) and dispatch of both ops."""
    fwd, bwd = _ops()
    x, w, b = _inputs(2, 3, 6, 5, 3, dtype, requires_grad=True)
    torch.library.opcheck(fwd, (x, w, b if with_bias else None))
    torch.library.opcheck(bwd, (torch.randn_like(x), x.detach(), w.detach()))


@pytest.mark.parametrize("compile_backend", ["aot_eager"] + (["inductor"] if HAS_CUDA else []))
def test_compile_fullgraph(compile_backend):
    """torch.compile traces the op without graph breaks, forward and backward. On GPU the op is a triton_op
    (inductor sees the kernels); under the interpreter it is an opaque custom op (see triton/_register.py)."""
    fwd, _ = _ops()
    fn = lambda x, w, b: torch.nn.functional.gelu(fwd(x, w, b)) * 2  # noqa: E731
    inputs = _inputs(2, 3, 6, 7, 3, torch.float32, requires_grad=True)
    check_compiled(fn, inputs, compile_backend, tol=1e-5)  # inductor may fuse gelu differently from eager


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_large_tensor_int64_offsets_gpu():
    """B*C*H*W > 2**31 elements (fp16: 4.3 GB): plane offsets must be 64-bit. Only the last planes are checked."""
    fwd, _ = _ops()
    B, C, H, W, K = 1, 700, 1792, 1792, 3  # 2.25e9 elements
    x = torch.randn(B, C, H, W, device="cuda", dtype=torch.float16)
    w = torch.randn(B, C, K, K, device="cuda", dtype=torch.float16)
    y = fwd(x, w, None)
    tail = slice(C - 2, C)
    assert rel_err(y[:, tail], reference.idconv(x[:, tail].double(), w[:, tail].double())) < 1e-2


def test_largest_kernel_size():
    """K = 31 (the largest the GPU backends accept) on a map smaller than the kernel: direct path, every tap
    masked by the map edges except the centre ones."""
    fwd, _ = _ops()
    x, w, b = _inputs(1, 1, 3, 4, 31, torch.float64, requires_grad=True)
    y = fwd(x, w, b)
    grad_y = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), grad_y)
    y_ref, expected = _reference_grads(x, w, b, grad_y)
    assert rel_err(y, y_ref) < TOL[torch.float64]
    for g, e in zip(got, expected):
        assert rel_err(g, e) < TOL[torch.float64]
