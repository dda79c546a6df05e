"""multiscale_dwconv2d_inference: gelu(multiscale_dwconv2d(x * in_scale + in_shift)) with the affine map and the
GELU inside the C++ CPU kernels, against the float64 composition of the plain ops; its checks, fake, compile, and
its use in the model's eager CPU inference (MS-FFN and STE)."""
import pytest
import torch
import torch.nn.functional as F

import transxnet_ops
from transxnet_ops import ops, reference
from utils import TOL, rel_err

pytestmark = [pytest.mark.skipif("cpu" not in transxnet_ops.available_backends("cpu"), reason="extension not built"),
              pytest.mark.usefixtures("nan_filled_empty")]  # unwritten outputs read as NaN

# (B, H, W, splits, kernel sizes): every layout of the CPU kernels (row windows, lane-packed narrow planes, 3x3
# strips of whole and half vectors), MS-FFN's four scales with uneven and empty splits, K > 7
CASES = [(2, 9, 11, [5, 3, 3, 3], [1, 3, 5, 7]), (3, 7, 7, [20, 17], [7, 3]), (2, 14, 14, [19], [7]),
         (2, 16, 17, [4, 2, 0, 3], [1, 3, 5, 7]), (1, 3, 2, [4], [7]), (2, 5, 30, [3, 2], [9, 31]),
         (2, 28, 28, [6, 2, 2, 2], [1, 3, 5, 7]), (3, 5, 8, [3], [3]), (2, 6, 12, [2, 3], [3, 5]),
         (2, 1, 40, [3], [3]), (1, 56, 56, [4], [3])]


def make(B, H, W, splits, ks, dtype, affine=True):
    C = sum(splits)
    x = torch.randn(B, C, H, W, dtype=dtype) * 2  # GELU's whole range, tails included
    weights = [torch.randn(c, 1, k, k, dtype=dtype) for c, k in zip(splits, ks)]
    biases = [torch.randn(c, dtype=dtype) for c in splits]
    scale = (torch.rand(C, dtype=dtype) + 0.5) if affine else None
    shift = torch.randn(C, dtype=dtype) if affine else None
    return x, weights, biases, scale, shift


def expected(x, weights, biases, scale, shift, gelu):
    x = x.double()
    if scale is not None:
        x = x * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)
    kept = [(w.double(), b.double()) for w, b in zip(weights, biases) if w.shape[0] > 0]
    y = reference.dwconv2d(x, torch.cat([w.reshape(-1) for w, _ in kept]), torch.cat([b for _, b in kept]),
                           [w.shape[0] for w, _ in kept], [w.shape[-1] for w, _ in kept])
    return F.gelu(y) if gelu else y


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{c[3]}-{c[4]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine,gelu", [(True, True), (False, True), (True, False)], ids=["bn-gelu", "gelu", "bn"])
def test_matches_the_composition(case, dtype, affine, gelu):
    x, weights, biases, scale, shift = make(*case, dtype, affine)
    with torch.no_grad():
        y = ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, gelu, backend="cpu")
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, expected(x, weights, biases, scale, shift, gelu)) < TOL[dtype]


def test_gelu_over_its_whole_range():
    """The kernels' float32 GELU (Abramowitz-Stegun erf) against float64: every element within 5e-7 absolute
    (torch's own float32 GELU: ~1e-6), saturating exactly (-0 far left, x far right), infinities as float64
    PyTorch has them."""
    x = torch.cat([torch.linspace(-12, 12, 100001), torch.tensor([-1e30, 1e30, float("-inf"), float("inf")])])
    x = x.view(1, 1, 1, -1)
    with torch.no_grad():
        y = ops.multiscale_dwconv2d_inference(x, [torch.ones(1, 1, 1, 1)], None, gelu=True, backend="cpu")
    finite = x.isfinite() & (x.abs() < 1e29)
    assert (y[finite].double() - F.gelu(x[finite].double())).abs().max() < 5e-7
    torch.testing.assert_close(y[~finite], F.gelu(x[~finite].double()).float(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
def test_memory_layouts(layout):
    x, weights, biases, scale, shift = make(2, 9, 11, [5, 3, 3, 3], [1, 3, 5, 7], torch.float32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.cat([x, x], 1)[:, 3:3 + x.shape[1]]
    with torch.no_grad():
        y = ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, True, backend="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert rel_err(y, expected(x, weights, biases, scale, shift, True)) < 1e-5


def test_other_backends_compose_the_same_math():
    x, weights, biases, scale, shift = make(2, 7, 9, [3, 3], [3, 5], torch.float64)
    with torch.no_grad():
        fused = ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, True, backend="cpu")
        composed = ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, True, backend="reference")
    assert rel_err(fused, composed) < 1e-12


def test_opcheck_and_compile():
    x, weights, biases, scale, shift = make(2, 6, 17, [3, 2], [3, 5], torch.float32)
    weight = torch.cat([w.reshape(-1) for w in weights])
    torch.library.opcheck(torch.ops.transxnet_ops.dwconv2d_inference,
                          (x, weight, torch.cat(biases), scale, shift, [3, 2], [3, 5], True))

    def fn(x):
        return ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, True, backend="cpu")

    torch._dynamo.reset()
    with torch.no_grad():
        assert rel_err(torch.compile(fn, fullgraph=True, backend="eager")(x), fn(x)) < 1e-6


BAD = {
    "scale alone": (lambda s, t: dict(in_scale=s), ValueError, "in_scale and in_shift must be given together"),
    "scale shape": (lambda s, t: dict(in_scale=s[:3], in_shift=t), ValueError, r"in_scale must be \(C,\) = \(4,\)"),
    "shift dtype": (lambda s, t: dict(in_scale=s, in_shift=t.double()), TypeError, "in_shift must have x's dtype"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    make_kwargs, exc, message = BAD[case]
    x, w, b = torch.randn(2, 4, 5, 5), [torch.randn(4, 1, 3, 3)], [torch.randn(4)]
    with torch.no_grad(), pytest.raises(exc, match=message):
        ops.multiscale_dwconv2d_inference(x, w, b, **make_kwargs(torch.rand(4), torch.rand(4)), gelu=True)


def test_refuses_autograd():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 1, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference only"):
        ops.multiscale_dwconv2d_inference(x, [w], gelu=True)
    with torch.no_grad():  # the same call is fine without autograd
        ops.multiscale_dwconv2d_inference(x, [w], gelu=True)


def test_direct_op_call_is_checked_in_cpp():
    with pytest.raises(RuntimeError, match=r"in_scale and in_shift must be \(C,\)"):
        torch.ops.transxnet_ops.dwconv2d_inference(torch.randn(1, 2, 4, 4), torch.randn(18), None, torch.ones(3),
                                                   torch.ones(3), [2], [3], True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_model_inference_runs_the_fused_epilogues(dtype):
    """Eager CPU inference of TransXNet-T: each block's MS-FFN (BatchNorm + multi-scale conv + GELU) and STE
    (3x3 conv + GELU) run as dwconv2d_inference, and the output is the unfused model's (autograd on)."""
    torch.manual_seed(0)
    model = transxnet_ops.models.transxnet_t(num_classes=10, backend="cpu").to(dtype).eval()
    with torch.no_grad():  # visible layer scales: every block's branches move the output
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.normal_(0, 0.5)
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fused = model(x)
    calls = sum(e.name == "transxnet_ops::dwconv2d_inference" for e in prof.events())
    blocks = sum(1 for m in model.modules() if type(m).__name__ == "Block")
    assert calls == 2 * blocks
    unfused = model(x)  # autograd on: the differentiable ops
    assert rel_err(fused, unfused.detach()) < TOL[dtype]
