"""transxnet_ops.dwconv2d / multiscale_dwconv2d (static depthwise conv) on every backend vs the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import transxnet_ops
from utils import HAS_CUDA, TOL, backend_device_pairs, rel_err

PAIRS = backend_device_pairs()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (B, C, H, W, K): TransXNet's 7x7 DPE and 3x3 local_conv/STE, K=1, H/W smaller than K, H != W, B=1, C=1.
SHAPES = [(2, 3, 8, 8, 3), (1, 1, 5, 7, 5), (2, 4, 9, 6, 7), (1, 2, 3, 2, 7), (2, 5, 4, 5, 1), (3, 3, 6, 11, 9)]
# MS-FFN: kernel sizes 1, 3, 5, 7 on four splits, the first taking the remainder (uneven on purpose).
MULTI = [(5, 1), (2, 3), (2, 5), (3, 7)]


def make_weights(splits, dtype, device, with_bias=True, requires_grad=False):
    ws = [torch.randn(c, 1, k, k, device=device, dtype=dtype, requires_grad=requires_grad) for c, k in splits]
    bs = [torch.randn(c, device=device, dtype=dtype, requires_grad=requires_grad) for c, _ in splits] if with_bias \
        else None
    return ws, bs


def official(x, ws, bs):
    """What the official model runs: one nn.Conv2d(groups=c) per split, concatenated."""
    parts = x.split([w.shape[0] for w in ws], dim=1)
    bs = bs or [None] * len(ws)
    return torch.cat([F.conv2d(p, w, b, padding=w.shape[-1] // 2, groups=w.shape[0]) for p, w, b in zip(parts, ws, bs)],
                     dim=1)


def expected(x, ws, bs):
    return official(x.double(), [w.double() for w in ws], None if bs is None else [b.double() for b in bs])


def skip_unsupported(backend, device, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered on GPU")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_reference(backend, device, shape, dtype):
    skip_unsupported(backend, device, dtype)
    B, C, H, W, K = shape
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    (w,), (b,) = make_weights([(C, K)], dtype, device)
    y = transxnet_ops.dwconv2d(x, w, b, backend=backend)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert rel_err(y, expected(x, [w], [b])) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_multiscale_forward_matches_reference(backend, device, dtype, with_bias):
    skip_unsupported(backend, device, dtype)
    x = torch.randn(2, sum(c for c, _ in MULTI), 9, 10, device=device, dtype=dtype)
    ws, bs = make_weights(MULTI, dtype, device, with_bias)
    y = transxnet_ops.multiscale_dwconv2d(x, ws, bs, backend=backend)
    assert rel_err(y, expected(x, ws, bs)) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_memory_layouts(backend, device, layout):
    x = torch.randn(2, 4, 9, 9, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(2, 8, 9, 12, device=device)[:, ::2, :, 1:10]
    else:
        x = x.transpose(2, 3)
    w = torch.randn(4, 1, 6, 3, device=device)[:, :, ::2].transpose(2, 3)  # non-contiguous weight
    b = torch.randn(8, device=device)[::2]
    assert not x.is_contiguous() and not w.is_contiguous()
    assert rel_err(transxnet_ops.dwconv2d(x, w, b, backend=backend), expected(x, [w], [b])) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("splits", [[(3, 3)], MULTI], ids=["single", "multiscale"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_float64(backend, device, splits, with_bias):
    x = torch.randn(2, sum(c for c, _ in splits), 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    ws, bs = make_weights(splits, torch.float64, device, with_bias, requires_grad=True)
    n = len(ws)
    fn = lambda x, *p: transxnet_ops.multiscale_dwconv2d(x, p[:n], p[n:] or None, backend=backend)  # noqa: E731
    # The Triton interpreter costs ~1 s a launch: check random directional derivatives there (fast mode)
    # rather than the full Jacobian, which would take half an hour per case.
    fast = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(fn, (x, *ws, *(bs or [])), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_reference(backend, device, dtype):
    skip_unsupported(backend, device, dtype)
    x = torch.randn(3, sum(c for c, _ in MULTI), 10, 7, device=device, dtype=dtype, requires_grad=True)
    ws, bs = make_weights(MULTI, dtype, device, requires_grad=True)
    grad_y = torch.randn_like(x)
    torch.autograd.backward(transxnet_ops.multiscale_dwconv2d(x, ws, bs, backend=backend), grad_y)
    refs = [t.detach().double().requires_grad_() for t in (x, *ws, *bs)]
    n = len(ws)
    torch.autograd.backward(official(refs[0], refs[1:1 + n], refs[1 + n:]), grad_y.double())
    for got, ref in zip((x, *ws, *bs), refs):
        assert rel_err(got.grad, ref.grad) < TOL[dtype]


@pytest.mark.parametrize("backend,device", PAIRS)
def test_frozen_bias_and_frozen_input(backend, device):
    """Only the gradients asked for come back; a frozen bias is not a reason to skip the weight gradient."""
    x = torch.randn(2, 3, 6, 5, device=device)
    w = torch.randn(3, 1, 3, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device)
    transxnet_ops.dwconv2d(x, w, b, backend=backend).square().sum().backward()
    w_ref = w.detach().double().requires_grad_()
    official(x.double(), [w_ref], [b.double()]).square().sum().backward()
    assert rel_err(w.grad, w_ref.grad) < 1e-5


@pytest.mark.parametrize("backend,device", PAIRS)
def test_backward_is_deterministic(backend, device):
    x = torch.randn(4, sum(c for c, _ in MULTI), 12, 9, device=device, requires_grad=True)
    ws, bs = make_weights(MULTI, torch.float32, device, requires_grad=True)
    grad_y = torch.randn_like(x)
    runs = [torch.autograd.grad(transxnet_ops.multiscale_dwconv2d(x, ws, bs, backend=backend), (x, *ws, *bs), grad_y)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    suffix = "_triton" if backend == "triton" else ""
    fwd = getattr(torch.ops.transxnet_ops, "dwconv2d" + suffix)
    bwd = getattr(torch.ops.transxnet_ops, "dwconv2d_backward" + suffix)
    samples = [(torch.randn(2, 3, 6, 5, device=device, requires_grad=True),
                torch.randn(27, device=device, requires_grad=True), torch.randn(3, device=device, requires_grad=True),
                [3], [3]),
               (torch.randn(1, 4, 4, 4, device=device, dtype=torch.float64, requires_grad=True),
                torch.randn(2 * 1 + 2 * 25, device=device, dtype=torch.float64, requires_grad=True), None,
                [2, 2], [1, 5])]
    for x, w, b, splits, ks in samples:
        torch.library.opcheck(fwd, (x, w, b, splits, ks))
        torch.library.opcheck(bwd, (torch.randn_like(x), x.detach(), w.detach(), splits, ks, b is not None))


@pytest.mark.parametrize("backend,device", PAIRS)
def test_empty_batch_and_map(backend, device):
    w, b = torch.randn(3, 1, 3, 3, device=device, requires_grad=True), torch.randn(3, device=device, requires_grad=True)
    for shape in [(0, 3, 5, 5), (2, 3, 0, 4)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        y = transxnet_ops.dwconv2d(x, w, b, backend=backend)
        assert y.shape == x.shape
        gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
        assert gx.shape == x.shape and not gw.any() and not gb.any()


BAD = {
    "x rank 3": (lambda x, w, b: (x[0], w, b), ValueError, "x must be 4-D"),
    "even K": (lambda x, w, b: (x, torch.randn(3, 1, 4, 4), b), ValueError, "kernel size must be odd"),
    "not depthwise": (lambda x, w, b: (x, torch.randn(3, 2, 3, 3), b), ValueError, "depthwise weight (c, 1, k, k)"),
    "channels": (lambda x, w, b: (x, w[:2], b[:2]), ValueError, "cover 2 channels, but x has C=3"),
    "bias shape": (lambda x, w, b: (x, w, b[:2]), ValueError, "bias must be (3,)"),
    "weight dtype": (lambda x, w, b: (x, w.double(), b), TypeError, "weight must have x's dtype"),
    "bias device": (lambda x, w, b: (x, w, b.to("meta")), TypeError, "bias must be on x's device"),
    "integer x": (lambda x, w, b: (x.long(), w.long(), b.long()), TypeError, "floating-point"),
    "not a tensor": (lambda x, w, b: (x, w.tolist(), b), TypeError, "weight must be a torch.Tensor"),
}


@pytest.mark.parametrize("backend", [b for b, _ in PAIRS] + ["reference"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(backend, case):
    make, exc, message = BAD[case]
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3), torch.randn(3)
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        transxnet_ops.dwconv2d(*make(x, w, b), backend=backend)


def test_multiscale_bad_input_names_the_split():
    x = torch.randn(2, 6, 5, 5)
    with pytest.raises(ValueError, match=r"weight\[1\]'s kernel size must be odd") as info:
        transxnet_ops.multiscale_dwconv2d(x, [torch.randn(3, 1, 1, 1), torch.randn(3, 1, 2, 2)],
                                          [torch.randn(3), torch.randn(2)])
    assert "bias[1] must be (3,)" in str(info.value)  # every problem at once


def test_direct_op_call_is_checked_in_cpp():
    """torch.ops called directly (no Python front) still rejects a short packed weight instead of reading past it."""
    if "cpu" not in transxnet_ops.available_backends("cpu"):
        pytest.skip("extension not built")
    with pytest.raises(RuntimeError, match="packed taps"):
        torch.ops.transxnet_ops.dwconv2d(torch.randn(1, 2, 4, 4), torch.randn(17), None, [2], [3])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_large_shapes_gpu(backend):
    """TransXNet-T MS-FFN at stage 1 and batch 128: many planes, 64-bit offsets, grid limits."""
    x = torch.randn(128, 192, 56, 56, device="cuda", dtype=torch.bfloat16)
    ws, bs = make_weights([(48, 1), (48, 3), (48, 5), (48, 7)], torch.bfloat16, "cuda")
    y = transxnet_ops.multiscale_dwconv2d(x, ws, bs, backend=backend)
    assert rel_err(y, expected(x, ws, bs)) < 1e-2
