"""The C++ CPU kernels called directly (torch.ops.transxnet_ops.*): edge shapes of their tiling, every gradient
against float64 autograd of the reference math, float64 gradcheck through their own backward ops, determinism and
independence of the thread count, and the narrower ISA variants (AVX2, baseline) in subprocesses.

Outputs are allocated with NaN fill (deterministic mode), so an element a kernel forgets to write fails."""
import os
import subprocess
import sys

import pytest
import torch

import transxnet_ops
from transxnet_ops import _ext, reference
from utils import rel_or_abs_err as err

pytestmark = [pytest.mark.skipif(not _ext.has_cpu_kernels(), reason="the C++ extension is not built"),
              pytest.mark.usefixtures("nan_filled_empty")]  # unwritten outputs read as NaN
ops = torch.ops.transxnet_ops

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


# ------------------------------------------------------------------------------------------------ IDConv
# (B, C, H, W, K): every K the model uses and more; H/W < K; column-group edges (W = 16/17, 32/33, 64/65, 130);
# H spanning several row blocks (300 x 70).
# Planes narrower than a vector (16 floats with AVX-512) take the lane-packed layout, in groups of `lanes` planes
# (19 planes: a partial group); K > 7 runs in tap chunks (9: 3 x 3, 11, 31).
IDCONV_SHAPES = [(1, 1, 5, 7, 1), (2, 3, 8, 8, 3), (1, 2, 9, 6, 5), (2, 2, 7, 7, 7), (1, 1, 11, 13, 9),
                 (1, 2, 10, 12, 13), (1, 2, 3, 2, 7), (2, 1, 1, 1, 13), (1, 1, 6, 16, 3), (1, 1, 5, 17, 3),
                 (1, 1, 4, 32, 5), (1, 1, 5, 33, 7), (1, 1, 3, 64, 3), (1, 1, 4, 65, 5), (1, 2, 9, 130, 7),
                 (1, 1, 300, 70, 5), (1, 19, 7, 7, 7), (1, 19, 14, 15, 3), (1, 2, 20, 21, 31), (1, 3, 5, 9, 31),
                 (1, 2, 23, 40, 11),
                 # 3 x 3 strips: half-vector strips (8 <= W < 16), overlapping last strips, one row, TransXNet's 56
                 (2, 3, 9, 8, 3), (1, 2, 4, 12, 3), (1, 2, 1, 40, 3), (1, 1, 30, 56, 3)]


def idconv_expected(x, w, b, grad_y):
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = reference.idconv(xd, wd, bd)
    y.backward(grad_y.double())
    return y.detach(), xd.grad, wd.grad, bd.grad


@pytest.mark.parametrize("shape", IDCONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_idconv_forward_backward(shape, dtype):
    if dtype in (torch.bfloat16, torch.float16) and shape[2] * shape[3] > 5000:
        pytest.skip("covered in float32/float64")
    B, C, H, W, K = shape
    x, w, b = torch.randn(B, C, H, W, dtype=dtype), torch.randn(B, C, K, K, dtype=dtype), torch.randn(B, C, dtype=dtype)
    grad_y = torch.randn(B, C, H, W, dtype=dtype)
    y = ops.idconv(x, w, b)
    grads = ops.idconv_backward(grad_y, x, w)
    expected = idconv_expected(x, w, b, grad_y)
    for got, ref in zip((y, *grads), expected):
        assert got.dtype == dtype and got.shape == ref.shape
        assert err(got, ref) < TOL[dtype]


def test_idconv_without_bias():
    x, w = torch.randn(2, 3, 6, 5, dtype=torch.float64), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert err(ops.idconv(x, w, None), reference.idconv(x, w)) < 1e-12


class IDConvFn(torch.autograd.Function):
    """The kernels' own forward/backward pair, independent of the package's autograd registration."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return ops.idconv(x, w, b)

    @staticmethod
    def backward(ctx, grad_y):
        return ops.idconv_backward(grad_y.contiguous(), *ctx.saved_tensors)


@pytest.mark.parametrize("shape", [(1, 2, 4, 5, 1), (2, 1, 5, 4, 3), (1, 1, 2, 3, 5), (1, 1, 4, 18, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_idconv_gradcheck(shape):
    B, C, H, W, K = shape
    make = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    assert torch.autograd.gradcheck(IDConvFn.apply, (make(B, C, H, W), make(B, C, K, K), make(B, C)))


def with_threads(n, fn):
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(was)


@pytest.mark.parametrize("W", [37, 7], ids=["rows", "packed"])
def test_idconv_deterministic_for_any_thread_count(W):
    x, w, gy = torch.randn(2, 24, 40, W), torch.randn(2, 24, 7, 7), torch.randn(2, 24, 40, W)
    first = ops.idconv_backward(gy, x, w)
    for threads in (1, 2, 3):
        for a, b in zip(first, with_threads(threads, lambda: ops.idconv_backward(gy, x, w))):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ static dwconv
# (B, H, W, split_sizes, kernel_sizes): MS-FFN's four scales with uneven splits, K up to 31, H/W < K, empty
# segments, both window layouts (W < 16: lane-packed, in groups that do not fill the last vector) and a plane tall
# enough for several row bands.
DWCONV_CASES = [(2, 9, 11, [5, 3, 3, 3], [1, 3, 5, 7]), (3, 7, 7, [20, 17], [7, 3]), (2, 14, 14, [19], [7]),
                (2, 16, 17, [4, 2, 0, 3], [1, 3, 5, 7]), (1, 3, 2, [4], [7]), (2, 5, 30, [3, 2], [9, 31]),
                (1, 1, 1, [2], [1]), (2, 20, 33, [3], [11]), (1, 300, 40, [2], [5]), (3, 28, 28, [6, 2, 2, 2], [1, 3, 5, 7]),
                # 3 x 3 strips (see IDCONV_SHAPES)
                (3, 5, 8, [3], [3]), (2, 6, 12, [2, 3], [3, 5]), (2, 1, 40, [3], [3]), (2, 17, 16, [2], [3])]


def dwconv_expected(x, w, b, grad_y, splits, ks):
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    # (the reference's grouped conv takes no empty segment; one adds nothing)
    nonempty = [(c, k) for c, k in zip(splits, ks) if c > 0]
    y = reference.dwconv2d(xd, wd, bd, [c for c, _ in nonempty], [k for _, k in nonempty])
    y.backward(grad_y.double())
    return y.detach(), xd.grad, wd.grad, bd.grad


def make_dwconv(B, H, W, splits, ks, dtype):
    C, taps = sum(splits), sum(c * k * k for c, k in zip(splits, ks))
    return (torch.randn(B, C, H, W, dtype=dtype), torch.randn(taps, dtype=dtype), torch.randn(C, dtype=dtype),
            torch.randn(B, C, H, W, dtype=dtype))


@pytest.mark.parametrize("case", DWCONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[3]}-{c[4]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dwconv_forward_backward(case, dtype):
    B, H, W, splits, ks = case
    if dtype in (torch.bfloat16, torch.float16) and H * W > 1000:
        pytest.skip("covered in float32/float64")
    x, w, b, grad_y = make_dwconv(B, H, W, splits, ks, dtype)
    y = ops.dwconv2d(x, w, b, splits, ks)
    grads = ops.dwconv2d_backward(grad_y, x, w, splits, ks, True)
    for got, ref in zip((y, *grads), dwconv_expected(x, w, b, grad_y, splits, ks)):
        assert got.dtype == dtype and got.shape == ref.shape
        assert err(got, ref) < TOL[dtype]


def test_dwconv_without_bias():
    x, w, _, grad_y = make_dwconv(2, 6, 5, [3, 2], [3, 5], torch.float64)
    y = ops.dwconv2d(x, w, None, [3, 2], [3, 5])
    assert err(y, reference.dwconv2d(x, w, None, [3, 2], [3, 5])) < 1e-12
    grad_x, grad_w, grad_b = ops.dwconv2d_backward(grad_y, x, w, [3, 2], [3, 5], False)
    assert grad_b.shape == (0,)
    _, exp_x, exp_w, _ = dwconv_expected(x, w, torch.zeros(5, dtype=x.dtype), grad_y, [3, 2], [3, 5])
    assert err(grad_x, exp_x) < 1e-12 and err(grad_w, exp_w) < 1e-12


@pytest.mark.parametrize("case", [(1, 4, 5, [2, 1], [1, 3]), (2, 3, 2, [1, 1], [5, 3]), (1, 3, 17, [1], [3])],
                         ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[3]}-{c[4]}")
def test_dwconv_gradcheck_public_op(case):
    B, H, W, splits, ks = case
    x = torch.randn(B, sum(splits), H, W, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(c, 1, k, k, dtype=torch.float64, requires_grad=True) for c, k in zip(splits, ks)]
    biases = [torch.randn(c, dtype=torch.float64, requires_grad=True) for c in splits]

    def fn(x, *params):
        return transxnet_ops.multiscale_dwconv2d(x, params[:len(splits)], params[len(splits):], backend="cpu")

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


@pytest.mark.parametrize("W", [30, 7], ids=["rows", "packed"])
def test_dwconv_deterministic_for_any_thread_count(W):
    """The weight gradient is a sum over the batch: fixed-order chunks, the same bits for any thread count."""
    x, w, _, grad_y = make_dwconv(5, 20, W, [40, 24, 24, 24], [1, 3, 5, 7], torch.float32)
    first = ops.dwconv2d_backward(grad_y, x, w, [40, 24, 24, 24], [1, 3, 5, 7], True)
    for threads in (1, 2, 3):
        again = with_threads(threads, lambda: ops.dwconv2d_backward(grad_y, x, w, [40, 24, 24, 24], [1, 3, 5, 7], True))
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_dwconv_large_batch_small_channels():
    """Few channels, many samples: the batch reduction is split into chunks (summed in order)."""
    x, w, b, grad_y = make_dwconv(40, 6, 6, [2], [3], torch.float64)
    grads = ops.dwconv2d_backward(grad_y, x, w, [2], [3], True)
    for got, ref in zip(grads, dwconv_expected(x, w, b, grad_y, [2], [3])[1:]):
        assert err(got, ref) < 1e-12


# ------------------------------------------------------------------------------------------------ attention
# (B, H, N, M, D): N = 1, M = 1, sizes off the 8-row tiles and 16-wide register blocks, TransXNet's M = 49.
ATTN_SHAPES = [(2, 1, 37, 49, 24), (1, 2, 1, 7, 16), (2, 2, 9, 1, 16), (1, 3, 20, 17, 20), (2, 1, 5, 130, 64),
               (1, 1, 1, 1, 1)]
BIAS_KINDS = [None, "1H", "BH", "11", "B1"]


def make_attention(B, H, N, M, D, bias_kind, dtype):
    q, k, v = (torch.randn(B, H, L, D, dtype=dtype) for L in (N, M, M))
    bias = None
    if bias_kind:
        bias = torch.randn(B if bias_kind[0] == "B" else 1, H if bias_kind[1] == "H" else 1, N, M, dtype=dtype)
    return q, k, v, bias


def attention_expected(q, k, v, bias, scale, grad_out):
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    qd, kd, vd, bd = leaves
    s = qd @ kd.transpose(-1, -2) * scale + (0 if bd is None else bd)
    out = torch.softmax(s, -1) @ vd
    out.backward(grad_out.double())
    return out.detach(), torch.logsumexp(s, -1).detach(), [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias_kind", BIAS_KINDS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_attention_forward_backward(shape, bias_kind, dtype):
    q, k, v, bias = make_attention(*shape, bias_kind, dtype)
    scale = 0.3
    out, lse = ops.osra_attention(q, k, v, bias, scale)
    grad_out = torch.randn_like(out)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, scale, bias is not None)
    exp_out, exp_lse, exp_grads = attention_expected(q, k, v, bias, scale, grad_out)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # bfloat16: the backward starts from the bfloat16-rounded `out` (delta = dO . O), as every flash backward does
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert err(out, exp_out) < tol and err(lse, exp_lse) < tol
    for got, ref in zip(grads, exp_grads):
        if ref is None:
            assert got.numel() == 0
        else:
            assert got.dtype == dtype and got.shape == ref.shape
            assert err(got, ref) < tol


def test_attention_bias_grad_summed_over_batch():
    """Bb = 1 with many query rows: the batch reduction runs over several row blocks and sub-blocks."""
    q, k, v, bias = make_attention(3, 2, 300, 49, 24, "1H", torch.float64)
    out, lse = ops.osra_attention(q, k, v, bias, 0.2)
    grad_out = torch.randn_like(out)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.2, True)
    exp_out, _, exp_grads = attention_expected(q, k, v, bias, 0.2, grad_out)
    assert err(out, exp_out) < 1e-12
    for got, ref in zip(grads, exp_grads):
        assert err(got, ref) < 1e-12


def test_attention_bias_without_grad():
    q, k, v, bias = make_attention(2, 2, 10, 6, 16, "1H", torch.float32)
    out, lse = ops.osra_attention(q, k, v, bias, 0.25)
    grad_out = torch.randn_like(out)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.25, False)
    _, _, exp_grads = attention_expected(q, k, v, bias, 0.25, grad_out)
    assert grads[3].numel() == 0
    for got, ref in zip(grads[:3], exp_grads[:3]):
        assert err(got, ref) < 1e-5


def test_attention_large_and_masked_scores():
    """Scores of +-100s (a naive exp overflows) and -inf entries (masked keys): finite, and as accurate as eager
    float32 PyTorch within a small factor (the softmax is nearly one-hot, so the gradients are tiny differences)."""
    q, k, v, bias = make_attention(1, 2, 12, 20, 16, "1H", torch.float32)
    q = q * 30
    bias[..., :5] = float("-inf")
    out, lse = ops.osra_attention(q, k, v, bias, 1.0)
    grad_out = torch.randn_like(out)
    grads = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 1.0, True)
    exp_out, exp_lse, exp_grads = attention_expected(q, k, v, bias, 1.0, grad_out)
    assert err(out, exp_out) < 1e-5 and err(lse, exp_lse) < 1e-5
    eager = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    (torch.softmax(eager[0] @ eager[1].transpose(-1, -2) + eager[3], -1) @ eager[2]).backward(grad_out)
    for got, eager_t, ref in zip(grads, eager, exp_grads):
        assert err(got, ref) < 10 * err(eager_t.grad, ref) + 1e-6


class AttentionFn(torch.autograd.Function):
    """The kernels' own forward/backward pair, independent of the package's autograd registration."""

    @staticmethod
    def forward(ctx, q, k, v, bias):
        out, lse = ops.osra_attention(q, k, v, bias, 0.4)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, out, lse = ctx.saved_tensors
        want_bias = bias is not None and ctx.needs_input_grad[3]
        gq, gk, gv, gb = ops.osra_attention_backward(grad_out.contiguous(), q, k, v, bias, out, lse, 0.4, want_bias)
        return gq, gk, gv, gb if want_bias else None


@pytest.mark.parametrize("bias_kind", BIAS_KINDS, ids=str)
def test_attention_gradcheck(bias_kind):
    inputs = [t if t is None else t.requires_grad_() for t in make_attention(2, 2, 5, 3, 4, bias_kind, torch.float64)]
    assert torch.autograd.gradcheck(AttentionFn.apply, inputs)


def test_attention_deterministic():
    q, k, v, bias = make_attention(4, 2, 150, 49, 24, "1H", torch.float32)
    out, lse = ops.osra_attention(q, k, v, bias, 0.2)
    grad_out = torch.randn_like(out)
    first = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.2, True)
    again = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.2, True)
    assert torch.equal(out, ops.osra_attention(q, k, v, bias, 0.2)[0])
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_attention_deterministic_for_any_thread_count():
    q, k, v, bias = make_attention(3, 2, 200, 49, 24, "1H", torch.float32)
    out, lse = ops.osra_attention(q, k, v, bias, 0.2)
    grad_out = torch.randn_like(out)
    first = ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.2, True)
    for threads in (1, 3):
        again = with_threads(threads, lambda: ops.osra_attention_backward(grad_out, q, k, v, bias, out, lse, 0.2, True))
        for a, b in zip(first, again):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ ISA variants
_ISA_CHECK = """
import torch
from transxnet_ops import reference
torch.manual_seed(0)
ops = torch.ops.transxnet_ops

def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()

for (B, H, W, splits, ks) in [(2, 9, 20, [3, 2, 2], [1, 3, 7]), (2, 7, 7, [9, 11], [5, 3]), (1, 6, 13, [3], [9]),
                              (2, 5, 12, [3], [3]), (1, 4, 5, [2], [3])]:
    C, taps = sum(splits), sum(c * k * k for c, k in zip(splits, ks))
    x, w, b, gy = torch.randn(B, C, H, W), torch.randn(taps), torch.randn(C), torch.randn(B, C, H, W)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    yr = reference.dwconv2d(xd, wd, bd, splits, ks)
    yr.backward(gy.double())
    got = (ops.dwconv2d(x, w, b, splits, ks), *ops.dwconv2d_backward(gy, x, w, splits, ks, True))
    for g, r in zip(got, (yr, xd.grad, wd.grad, bd.grad)):
        assert rel(g, r) < 1e-5, (splits, ks)
    wi = torch.randn(B, C, ks[0], ks[0])
    bi = torch.randn(B, C)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, wi, bi))
    yr = reference.idconv(xd, wd, bd)
    yr.backward(gy.double())
    got = (ops.idconv(x, wi, bi), *ops.idconv_backward(gy, x, wi))
    for g, r in zip(got, (yr, xd.grad, wd.grad, bd.grad)):
        assert rel(g, r) < 1e-5

q, k, v, bias = torch.randn(2, 2, 37, 24), torch.randn(2, 2, 49, 24), torch.randn(2, 2, 49, 24), torch.randn(1, 2, 37, 49)
out, lse = ops.osra_attention(q, k, v, bias, 0.3)
go = torch.randn_like(out)
grads = ops.osra_attention_backward(go, q, k, v, bias, out, lse, 0.3, True)
leaves = [t.double().requires_grad_() for t in (q, k, v, bias)]
ref = torch.softmax(leaves[0] @ leaves[1].transpose(-1, -2) * 0.3 + leaves[3], -1) @ leaves[2]
ref.backward(go.double())
assert rel(out, ref) < 1e-5
for g, l in zip(grads, leaves):
    assert rel(g, l.grad) < 1e-5
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_narrower_isa_variants(isa):
    """Each kernel is compiled for AVX-512, AVX2 and the baseline and picked at run time; TRANSXNET_CPU_ISA caps
    the level, so the variants this machine does not pick are checked too (in a fresh process: read once)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRANSXNET_CPU_ISA=isa, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
