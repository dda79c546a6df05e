"""transxnet_ops.pointwise: 1x1 convs as matmuls (either path), eval BatchNorm folding, against the modules."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transxnet_ops import pointwise
from transxnet_ops.nn import ConvBN

from utils import rel_err

# (Ci, Co, H), batch 2: the first five take the matmul path on CPU (the fifth as a small GEMM), the last two
# oneDNN's conv
SHAPES = [(24, 6, 8), (48, 16, 12), (16, 48, 20), (224, 56, 7), (112, 112, 14), (112, 112, 40), (48, 192, 40)]


def _bn(c, dtype):
    bn = nn.BatchNorm2d(c).to(dtype)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    return bn


@pytest.mark.parametrize("ci,co,h", SHAPES)
def test_matmul_choice_follows_the_shape_rule(ci, co, h):
    x = torch.empty(2, ci, h, h)
    small_gemm = 2 * h * h * ci * co <= pointwise.SMALL_GEMM_MACS
    expected = small_gemm or (min(ci, co) < 64 and (max(ci, co) <= 128 or h * h <= 256))
    assert pointwise.matmul_pays(x, ci, co) == expected
    assert expected == (SHAPES.index((ci, co, h)) < 5)
    assert not pointwise.matmul_pays(x.to("meta"), ci, co)  # not CPU: the conv (cuDNN on GPUs)


@pytest.mark.parametrize("ci,co,h", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channel_slice", "channels_last"])
def test_conv1x1_matches_conv2d_with_gradients(ci, co, h, bias, residual, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 2 * ci, h, h + 1, dtype=torch.float64)
    x = x[:, ci:] if layout == "channel_slice" else x[:, :ci].contiguous()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(co, ci, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(co, dtype=torch.float64, requires_grad=True) if bias else None
    r = torch.randn(2, co, h, h + 1, dtype=torch.float64, requires_grad=True) if residual else None
    out = pointwise.conv1x1(x, w, b, r)
    ref = F.conv2d(x, w, b) + (0 if r is None else r)
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-12
    gy = torch.randn_like(ref)
    inputs = [t for t in (x, w, b, r) if t is not None]
    for g, g_ref in zip(torch.autograd.grad(out, inputs, gy), torch.autograd.grad(ref, inputs, gy)):
        assert rel_err(g, g_ref) < 1e-12


@pytest.mark.parametrize("ci,co,h", SHAPES)
def test_conv1x1_tokens_is_the_transposed_conv(ci, co, h):
    x = torch.randn(2, ci, h, h, dtype=torch.float64)
    w, b = torch.randn(co, ci, 1, 1, dtype=torch.float64), torch.randn(co, dtype=torch.float64)
    out = pointwise.conv1x1_tokens(x, w, b)
    assert out.shape == (2, h * h, co)
    assert rel_err(out, F.conv2d(x, w, b).flatten(2).transpose(1, 2)) < 1e-12


def test_conv1x1_keeps_fp32_residual_under_autocast():
    x, w, r = torch.randn(2, 16, 8, 8), torch.randn(48, 16, 1, 1), torch.randn(2, 48, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pointwise.conv1x1(x, w, None, r)
        ref = F.conv2d(x, w) + r
    assert out.dtype == ref.dtype == torch.float32 and rel_err(out, ref) < 1e-2


def test_fold_1x1_equals_the_module_chain():
    """out_scale * after(conv(before(x))) + out_shift, every piece an eval module."""
    torch.manual_seed(0)
    dt = torch.float64
    before, conv, after = _bn(12, dt).eval(), nn.Conv2d(12, 20, 1).to(dt), _bn(20, dt).eval()
    scale, shift = torch.randn(20, dtype=dt), torch.randn(20, dtype=dt)
    x = torch.randn(3, 12, 5, 5, dtype=dt)
    w, b = pointwise.fold_1x1(conv, before=before, after=after, out_scale=scale, out_shift=shift)
    ref = after(conv(before(x))) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    assert rel_err(pointwise.conv1x1(x, w, b), ref) < 1e-12


@pytest.mark.parametrize("kernel,stride,act", [(1, 1, True), (3, 2, False), (7, 4, False)])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_conv_bn_matches_modules_and_updates_statistics(kernel, stride, act, train):
    """ConvBN: eval folds the BatchNorm (outputs and gradients as the modules); train is the exact BatchNorm
    (batch statistics, running-statistic updates)."""
    torch.manual_seed(0)
    dt = torch.float64
    fused = ConvBN(16, 24, kernel, stride, kernel // 2, act=act).to(dt)
    with torch.no_grad():
        fused.bn.running_mean.uniform_(-1, 1), fused.bn.running_var.uniform_(0.5, 2), fused.bn.bias.uniform_(-1, 1)
    fused.train(train)
    ref = copy.deepcopy(fused)
    x = torch.randn(2, 16, 13, 13, dtype=dt, requires_grad=True)
    out = fused(x)
    expected = nn.Sequential.forward(ref, x)  # nn.Sequential's own forward: conv -> bn (-> GELU)
    assert rel_err(out, expected) < 1e-12
    for (k, v), v_ref in zip(fused.state_dict().items(), ref.state_dict().values()):  # running statistics alike
        assert torch.allclose(v, v_ref, rtol=1e-12, atol=0), k
    assert train == (fused.bn.num_batches_tracked.item() == 1)
    gy = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x] + list(fused.parameters()), gy)
    for g, g_ref in zip(grads, torch.autograd.grad(expected, [x] + list(ref.parameters()), gy)):
        assert rel_err(g, g_ref) < 1e-10


# ------------------------------------------------------------------------------------------------ conv + GELU
_ONEDNN = pointwise._ONEDNN_CONV_POINTWISE is not None and torch.backends.mkldnn.enabled


@pytest.mark.skipif(not _ONEDNN, reason="torch built without oneDNN's fused convolution (mkldnn._convolution_pointwise)")
@pytest.mark.parametrize("bias", [False, True])
def test_conv1x1_gelu_fused_in_inference_is_the_exact_gelu(bias):
    """CPU fp32 inference: one oneDNN conv with an erf-GELU post-op, equal to F.gelu(conv) (not the tanh form)."""
    torch.manual_seed(0)
    x = torch.randn(2, 48, 40, 40)  # large enough to stay on oneDNN (not a small GEMM)
    w, b = torch.randn(192, 48, 1, 1) * 0.2, (torch.randn(192) if bias else None)
    ref = F.gelu(F.conv2d(x.double(), w.double(), None if b is None else b.double()))
    with torch.no_grad():
        assert pointwise.onednn_gelu_pays(x, w, b)
        out = pointwise.conv1x1_gelu(x, w, b)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-6
    tanh_form = F.gelu(F.conv2d(x.double(), w.double(), None if b is None else b.double()), approximate="tanh")
    assert rel_err(out, tanh_form) > 10 * rel_err(out, ref)


def test_conv1x1_gelu_keeps_autograd_and_narrow_convs_unfused():
    """With autograd (training), under autocast or on a matmul-path shape: the plain conv then F.gelu."""
    torch.manual_seed(0)
    x = torch.randn(2, 48, 20, 20, dtype=torch.float64, requires_grad=True)
    w = torch.randn(192, 48, 1, 1, dtype=torch.float64, requires_grad=True)
    assert not pointwise.onednn_gelu_pays(x.float(), w.float().detach().requires_grad_())
    with torch.no_grad():
        assert not pointwise.onednn_gelu_pays(torch.randn(2, 48, 8, 8), torch.randn(16, 48, 1, 1))  # matmul path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not pointwise.onednn_gelu_pays(x.float(), w.float())
    out = pointwise.conv1x1_gelu(x, w)
    ref = F.gelu(F.conv2d(x, w))
    assert rel_err(out, ref) < 1e-12
    gy = torch.randn_like(out)
    for g, g_ref in zip(torch.autograd.grad(out, (x, w), gy), torch.autograd.grad(ref, (x, w), gy)):
        assert rel_err(g, g_ref) < 1e-12


def test_run_fuses_conv_gelu_pairs_like_the_sequential():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(48, 192, 1, bias=False), nn.GELU(), _bn(192, torch.float32)).eval()
    x = torch.randn(2, 48, 40, 40)
    with torch.no_grad():
        assert rel_err(pointwise.run(seq, x), seq(x)) < 1e-6


# ------------------------------------------------------------------------------------------------ memo
def test_memo_reuses_until_a_source_changes():
    """Folded weights are kept per state: reused while the sources are unchanged, rebuilt after an in-place
    update, load_state_dict or a replaced storage; bypassed when autograd needs the sources."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 8, 1), _bn(8, torch.float32).eval()
    owner, calls = nn.Module(), []

    def fold():
        calls.append(1)
        return pointwise.fold_1x1(conv, after=bn)

    def folded():
        return pointwise.memo(owner, "w", (conv, bn), fold)

    with torch.no_grad():  # off by default: built per call
        folded(), folded()
        assert len(calls) == 2
    calls.clear()
    with torch.no_grad(), pointwise.cached_folding():
        first = folded()
        assert folded() is first and len(calls) == 1
        conv.weight.mul_(2)  # in place: an optimizer step
        second = folded()
        assert len(calls) == 2 and torch.allclose(second[0], first[0] * 2)
        bn.load_state_dict(_bn(8, torch.float32).state_dict())
        third = folded()
        assert len(calls) == 3 and torch.allclose(third[0], pointwise.fold_1x1(conv, after=bn)[0])
        conv.weight.data = conv.weight.data.clone() * 3  # new storage, same version
        assert len(calls) == 3 and torch.allclose(folded()[0], pointwise.fold_1x1(conv, after=bn)[0])
        assert len(calls) == 4
    with pointwise.cached_folding():
        w, _ = folded()  # grad enabled, parameters require grad: built per call, on the autograd graph
    assert len(calls) == 5 and w.requires_grad
