"""IDConv2d and OSRA against the official DynamicConv2d / Attention (tests/official_reference.py) with the same
weights, on every CPU backend: outputs, gradients, and BatchNorm running statistics after a training forward.
Plus the small building blocks (LayerScale, DropPath, MultiScaleDWConv) and convert()."""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transxnet_ops
from official_reference import Attention, DynamicConv2d, official_like, to_official
from transxnet_ops import IDConv2d, OSRA, pointwise
from transxnet_ops.convert import convert
from transxnet_ops.nn import DropPath, LayerScale, MultiScaleDWConv
from utils import rel_err

BACKENDS = transxnet_ops.available_backends("cpu")  # "reference" always; "cpu" / "triton" when present here
DT = torch.float64


def randomize_(module):
    """Non-trivial BatchNorm statistics/affines, conv weights and biases, and bare parameters (IDConv kernels,
    layer scales, position encodings), so that folding or ordering mistakes show."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
            elif isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.3)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2)
            elif not isinstance(m, nn.GroupNorm):
                for p in m.parameters(recurse=False):
                    p.normal_(0, 0.5)
    return module


def run_pair(fused, ref, x, *extra, train):
    """Forward + backward both modules on the same input; return (outputs, input grads, param grads)."""
    fused.train(train), ref.train(train)
    results = []
    for m in (fused, ref):
        xi = x.clone().requires_grad_()
        extras = [e.clone().requires_grad_() if e is not None else None for e in extra]
        out = m(xi, *extras)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * g).sum().backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        grads.update({f"extra{i}": e.grad for i, e in enumerate(extras) if e is not None})
        results.append((out, xi.grad, grads))
    return results


def assert_same_state(fused, ref, tol=1e-10):
    """Same keys in the same order, same values (modules or state dicts)."""
    a = fused if isinstance(fused, dict) else fused.state_dict()
    b = ref if isinstance(ref, dict) else ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        if a[k].is_floating_point():
            assert rel_err(a[k], b[k]) < tol, k
        else:
            assert torch.equal(a[k], b[k]), k


def assert_pair_matches(results, tol=1e-10):
    (out, gx, grads), (ref_out, ref_gx, ref_grads) = results
    assert out.shape == ref_out.shape
    assert rel_err(out, ref_out) < tol
    assert rel_err(gx, ref_gx) < tol
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert grads[k] is not None and ref_grads[k] is not None, k
        assert rel_err(grads[k], ref_grads[k]) < tol, k


# ------------------------------------------------------------------------------------------------ IDConv2d
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("K,G,bias,size", [(7, 2, True, (10, 9)), (3, 3, True, (9, 13)), (5, 2, False, (6, 4))])
def test_idconv2d_matches_official(backend, train, K, G, bias, size):
    fused = randomize_(IDConv2d(12, kernel_size=K, num_groups=G, bias=bias, backend=backend)).to(DT)
    ref = official_like(fused)
    x = torch.randn(2, 12, *size, dtype=DT)
    assert_pair_matches(run_pair(fused, ref, x, train=train))
    assert_same_state(fused, ref)  # running stats: both proj calls updated them, in the same order
    if train:  # proj's BN runs once for the kernels and once more for the bias
        assert fused.proj[0].bn.num_batches_tracked.item() == (2 if bias else 1)


def test_idconv2d_state_dict_and_float32():
    fused = randomize_(IDConv2d(8, kernel_size=7, num_groups=2)).eval()
    ref = official_like(fused)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(2, 8, 20, 20)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 1e-5


def test_idconv2d_requires_groups():
    with pytest.raises((AssertionError, ValueError)):
        IDConv2d(8, num_groups=1)  # the official DynamicConv2d asserts num_groups > 1


# ------------------------------------------------------------------------------------------------ OSRA
def make_osra(backend, sr_ratio, heads=2, dim=8, attn_drop=0.0, qk_scale=None):
    fused = OSRA(dim, num_heads=heads, qk_scale=qk_scale, attn_drop=attn_drop, sr_ratio=sr_ratio, backend=backend)
    return randomize_(fused).to(DT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("sr_ratio", [1, 2, 8])
def test_osra_matches_official(backend, train, sr_ratio):
    fused = make_osra(backend, sr_ratio)
    ref = official_like(fused)
    H, W = 16, 12
    N, M = H * W, -(-H // sr_ratio) * -(-W // sr_ratio)
    x = torch.randn(2, 8, H, W, dtype=DT)
    pos = torch.randn(1, 2, N, M, dtype=DT)  # the model's (1, heads, N, M) encoding, exact size
    assert_pair_matches(run_pair(fused, ref, x, pos, train=train))
    assert_same_state(fused, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sr_ratio", [1, 2, 8])
def test_osra_resizes_position_encoding_like_official(backend, sr_ratio):
    """An encoding made for another input size is bicubic-resized (align_corners=False); its gradient flows."""
    fused = make_osra(backend, sr_ratio, heads=1)
    ref = official_like(fused)
    # made for 16x12 (at least 2 keys per row even at sr 8: a single key column would get a zero gradient)
    pos = torch.randn(1, 1, 16 * 12, -(-16 // sr_ratio) * -(-12 // sr_ratio), dtype=DT)
    x = torch.randn(1, 8, 11, 7, dtype=DT)
    assert_pair_matches(run_pair(fused, ref, x, pos, train=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_osra_without_encoding_and_custom_scale(backend):
    fused = make_osra(backend, 2, qk_scale=0.3)
    ref = official_like(fused)
    assert fused.scale == ref.scale == 0.3
    x = torch.randn(2, 8, 10, 10, dtype=DT)
    assert_pair_matches(run_pair(fused, ref, x, None, train=False))


def test_osra_attention_dropout_falls_back_to_official_math():
    """attn_drop > 0: training runs the unfused path with dropout (same mask for the same seed); eval is fused."""
    fused = make_osra("reference", 4, attn_drop=0.3)
    ref = official_like(fused)
    x, pos = torch.randn(2, 8, 12, 12, dtype=DT), torch.randn(1, 2, 144, 9, dtype=DT)
    fused.train(), ref.train()
    torch.manual_seed(7)
    out = fused(x, pos)
    torch.manual_seed(7)
    ref_out = ref(x, pos)
    assert rel_err(out, ref_out) < 1e-10
    fused.eval(), ref.eval()
    with torch.no_grad():
        assert rel_err(fused(x, pos), ref(x, pos)) < 1e-10


# ------------------------------------------------------------------------------------------------ small blocks
def test_layer_scale_equals_official_depthwise_conv():
    ls = LayerScale(6, init_value=0.5)
    with torch.no_grad():
        ls.weight.normal_(), ls.bias.normal_()
    x = torch.randn(2, 6, 5, 5)
    assert ls.weight.shape == (6, 1, 1, 1) and ls.bias.shape == (6,)
    assert rel_err(ls(x), F.conv2d(x, ls.weight, ls.bias, groups=6)) < 1e-6


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.randn(64, 3, 2, 2)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert (kept | dropped).all() and kept.any() and dropped.any()  # whole samples, not elements
    assert torch.allclose(y[kept], x[kept] * 2)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_multi_scale_dwconv_splits():
    m = MultiScaleDWConv(10)
    assert m.channels == [4, 2, 2, 2]  # the first split takes the remainder
    assert [c.kernel_size[0] for c in m.proj] == [1, 3, 5, 7]
    assert m(torch.randn(1, 10, 6, 6)).shape == (1, 10, 6, 6)



def test_multi_scale_dwconv_adds_its_input_through_the_centre_taps():
    """forward(x, add_input=True) == forward(x) + x, gradients included (the 1s add to the weights' centre taps)."""
    torch.manual_seed(0)
    m = randomize_(MultiScaleDWConv(10)).to(DT)
    x = torch.randn(2, 10, 7, 6, dtype=DT, requires_grad=True)
    out, ref = m(x, add_input=True), m(x) + x
    assert rel_err(out, ref) < 1e-12
    gy = torch.randn_like(out)
    params = [x] + list(m.parameters())
    for g, g_ref in zip(torch.autograd.grad(out, params, gy), torch.autograd.grad(ref, params, gy)):
        assert rel_err(g, g_ref) < 1e-12
    assert set(m.state_dict()) == {f"proj.{i}.{p}" for i in range(4) for p in ("weight", "bias")}


@pytest.mark.parametrize("train,cached", [(False, False), (False, True), (True, False)],
                         ids=["eval", "eval-cached", "train"])
def test_msffn_matches_official_mlp(train, cached):
    """MS-FFN (with the layer scale and residual the Block passes) against the official Mlp + LayerScale: outputs,
    gradients, running statistics; eval inference (fused conv+GELU, cached folds) stays right across updates."""
    from transxnet_ops.models import official as O
    from transxnet_ops.nn import MSFFN
    torch.manual_seed(0)
    dtype = DT if train else torch.float32
    ours = randomize_(MSFFN(16, 192)).to(dtype).train(train)  # fc1 16 -> 192 @ 17^2: on oneDNN, not a matmul
    scale = randomize_(LayerScale(16)).to(dtype)
    ref, ref_scale = O.Mlp(16, 192).to(dtype).train(train), O.LayerScale(16).to(dtype)
    ref.load_state_dict(ours.state_dict()), ref_scale.load_state_dict(scale.state_dict())
    x, res = torch.randn(2, 16, 17, 17, dtype=dtype), torch.randn(2, 16, 17, 17, dtype=dtype)
    tol = 1e-12 if train else 1e-5
    if train:
        x.requires_grad_()
        out, expected = ours(x, residual=res, layer_scale=scale), res + ref_scale(ref(x))
        assert rel_err(out, expected) < tol
        gy = torch.randn_like(out)
        ps, ps_ref = [x] + list(ours.parameters()), [x] + list(ref.parameters())
        for g, g_ref in zip(torch.autograd.grad(out, ps, gy), torch.autograd.grad(expected, ps_ref, gy)):
            # a bias before a training BatchNorm gets a gradient of ~0 (rounding): compared absolutely
            assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-12)
        for (k, v), v_ref in zip(ours.state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(v, v_ref, rtol=1e-12, atol=0), k
        return
    with torch.no_grad(), (pointwise.cached_folding() if cached else contextlib.nullcontext()):
        for step in range(3):
            out, expected = ours(x, residual=res, layer_scale=scale), res + ref_scale(ref(x))
            assert rel_err(out - res, expected - res) < tol, step
            for p, p_ref in zip(list(ours.parameters()) + list(scale.parameters()),
                                list(ref.parameters()) + list(ref_scale.parameters())):
                p.mul_(1.1), p_ref.mul_(1.1)  # in place, as an optimizer step: cached folds must follow
            ours.norm.running_var.add_(0.1), ref.norm.running_var.add_(0.1)
            if not cached:  # by default even writes through .data (no version bump) are seen
                ours.fc2[0].weight.data.mul_(0.9), ref.fc2[0].weight.data.mul_(0.9)


# ------------------------------------------------------------------------------------------------ convert
class _Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.units = nn.ModuleList([DynamicConv2d(8, kernel_size=5, num_groups=3),
                                    nn.Sequential(nn.Identity(), Attention(8, num_heads=2, sr_ratio=2, qk_scale=0.25))])

    def forward(self, x):
        return self.units[1](self.units[0](x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_nested_modules(backend):
    model = randomize_(_Wrapper()).to(DT).eval()
    x = torch.randn(2, 8, 10, 10, dtype=DT)
    with torch.no_grad():
        expected = model(x)
    state = copy.deepcopy(model.state_dict())
    assert convert(model, backend=backend) is model
    idconv, osra = model.units[0], model.units[1][1]
    assert isinstance(idconv, IDConv2d) and isinstance(osra, OSRA)
    assert idconv.backend == osra.backend == backend and osra.scale == 0.25
    assert idconv.weight.dtype == DT and not idconv.training
    assert_same_state(model, state)
    with torch.no_grad():
        assert rel_err(model(x), expected) < 1e-10


def test_convert_top_level_and_leaves_other_attention_alone():
    ref = DynamicConv2d(8, kernel_size=3, num_groups=2).train()
    fused = convert(ref)
    assert isinstance(fused, IDConv2d) and fused.training

    class Attention(nn.Module):  # some other library's attention, without the official attributes
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)

    other = nn.Sequential(Attention())
    assert type(convert(other)[0]).__name__ == "Attention"


def test_convert_model_built_from_official_units():
    """A TransXNet whose IDConv/OSRA are the official-style classes: convert() restores identical outputs."""
    from transxnet_ops.models import TransXNet
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64], kernel_size=[7, 5, 3, 3], num_groups=[2, 3, 2, 4],
                sr_ratio=[8, 4, 2, 1], num_heads=[1, 2, 3, 4])
    model = to_official(randomize_(TransXNet(arch, image_size=64, num_classes=10))).eval()
    assert not any(isinstance(m, (IDConv2d, OSRA)) for m in model.modules())
    x = torch.randn(2, 3, 48, 56)  # not the 64x64 the encodings were made for
    with torch.no_grad():
        expected = model(x)
        convert(model, backend="reference")
        assert sum(isinstance(m, IDConv2d) for m in model.modules()) == 4
        assert sum(isinstance(m, OSRA) for m in model.modules()) == 4
        assert rel_err(model(x), expected) < 1e-5
