"""The official restatement (transxnet_ops.models.official) and the package's model against it.

1. The restatement is pinned to the real official code (models/transxnet.py of LMMMEng/TransXNet, commit
   ce2c73d): tests/data/official_tiny_transxnet.pt holds a tiny random-weight model run through that code
   (eval outputs at 64x64 and 80x72, train outputs, BatchNorm running statistics after the train forward),
   and tests/data/transxnet_{t,s,b}_state_dict_keys.json its exact state_dict layouts.
2. The package's TransXNet, loaded with the same state_dict, matches the restatement in eval and train mode:
   outputs, the gradients of every parameter and of the input, and the BatchNorm running statistics, in
   float32 and float64 on the CPU backends (and on the GPU ones when a GPU is present).
"""
import json
import os

import pytest
import torch
from torch import nn

import transxnet_ops
from transxnet_ops.models import (OfficialTransXNet, TransXNet, official_transxnet_b, official_transxnet_s,
                                  official_transxnet_t, transxnet_b, transxnet_s, transxnet_t)
from transxnet_ops.models import official
from utils import HAS_CUDA, rel_err

DATA = os.path.join(os.path.dirname(__file__), "data")
# "reference" always, "cpu" when built. Triton on CPU only runs interpreted, seconds per IDConv launch: the model on
# it is checked against the official outputs in test_model.py (forward, eval and train), its gradients op by op
# (test_triton_idconv.py, test_osra.py), and through the whole model on a GPU (test_ours_matches_official_on_gpu).
BACKENDS = [b for b in transxnet_ops.available_backends("cpu") if b != "triton"]
GPU_BACKENDS = [b for b in transxnet_ops.available_backends("cuda") if b != "reference"] if HAS_CUDA else []
OFFICIAL = {"t": official_transxnet_t, "s": official_transxnet_s, "b": official_transxnet_b}
OURS = {"t": transxnet_t, "s": transxnet_s, "b": transxnet_b}
PARAMS = {"t": 12_834_808, "s": 26_864_068, "b": 48_009_002}  # the official code's counts at commit ce2c73d
TOL = 1e-5  # float32


@pytest.fixture(scope="module")
def tiny():
    return torch.load(os.path.join(DATA, "official_tiny_transxnet.pt"), weights_only=False)


def official_keys(arch):
    with open(os.path.join(DATA, f"transxnet_{arch}_state_dict_keys.json")) as f:
        return json.load(f)


def build_pair(tiny, backend, dtype=torch.float32, **kwargs):
    """The restatement and our model with the official tiny state_dict (same hyper-parameters)."""
    ref = OfficialTransXNet(image_size=tiny["image_size"], arch=tiny["arch"], num_classes=tiny["num_classes"],
                            **kwargs)
    ours = TransXNet(tiny["arch"], image_size=tiny["image_size"], num_classes=tiny["num_classes"], backend=backend,
                     **kwargs)
    if kwargs.get("fork_feat"):  # no classifier; the stage norms keep their (official) init
        state = {k: v for k, v in tiny["state_dict"].items() if not k.startswith("classifier")}
        assert not ref.load_state_dict(state, strict=False).unexpected_keys
    else:
        ref.load_state_dict(tiny["state_dict"], strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.to(dtype), ref.to(dtype)


def forward_backward(model, x, seed=0):
    """Outputs, input gradient and parameter gradients of a fixed linear functional of the output(s)."""
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # same DropPath masks in both models
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).reshape(o.shape)).sum()
               for o in outs)
    loss.backward()
    return outs, x.grad, {n: p.grad for n, p in model.named_parameters()}


def assert_models_match(ours, ref, x):
    """Outputs, input gradient, every parameter gradient and the BatchNorm statistics after the forward.

    float64 holds every tensor to 1e-9: any difference in the math shows. float32 holds outputs, the input
    gradient and BN statistics to 1e-5 per tensor, and the parameter gradients to 1e-5 as one vector: some of
    them are ill-conditioned in the official model itself (in training, IDConv's `proj` BatchNorm normalises the
    global mean over only B values per channel), so a 1e-7 change of the input moves them by ~1e-4 in any
    float32 implementation. Gradients that vanish exactly (a bias right before a training-mode BatchNorm, whose
    shift it removes) are held to a floor of 1e-6 of the whole gradient's norm."""
    tol = 1e-9 if x.dtype == torch.float64 else 1e-5
    outs, gx, grads = forward_backward(ours, x)
    ref_outs, ref_gx, ref_grads = forward_backward(ref, x)
    assert len(outs) == len(ref_outs)
    for o, r in zip(outs, ref_outs):
        assert o.shape == r.shape and rel_err(o, r) < tol
    assert rel_err(gx, ref_gx) < tol
    assert list(grads) == list(ref_grads) and all(g is not None for g in grads.values())
    total = torch.cat([g.double().flatten() for g in ref_grads.values()]).norm()
    if x.dtype == torch.float64:
        for name, g in grads.items():
            expected = ref_grads[name]
            assert (g - expected).norm() <= tol * max(expected.norm(), 1e-6 * total), name
    else:
        assert torch.cat([(g.double() - ref_grads[n].double()).flatten() for n, g in grads.items()]).norm() < tol * total
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    for k, v in ref_state.items():
        if "running" in k:
            assert rel_err(ours_state[k], v) < tol, k
        elif "num_batches" in k:
            assert torch.equal(ours_state[k], v), k


# ------------------------------------------------------------------------------------------------ restatement
def test_restatement_reproduces_official_eval_outputs(tiny):
    ref = OfficialTransXNet(image_size=tiny["image_size"], arch=tiny["arch"], num_classes=tiny["num_classes"])
    ref.load_state_dict(tiny["state_dict"], strict=True)
    ref.eval()
    with torch.no_grad():
        assert rel_err(ref(tiny["input"]), tiny["output_eval"]) < TOL
        assert rel_err(ref(tiny["input_80"]), tiny["output_eval_80"]) < TOL  # bicubic-resized encodings


def test_restatement_reproduces_official_train_outputs_and_bn_updates(tiny):
    ref = OfficialTransXNet(image_size=tiny["image_size"], arch=tiny["arch"], num_classes=tiny["num_classes"])
    ref.load_state_dict(tiny["state_dict"], strict=True)
    assert rel_err(ref.train()(tiny["input"]), tiny["output_train"]) < TOL
    after = ref.state_dict()
    assert list(after) == list(tiny["state_dict_after_train"])
    for k, v in tiny["state_dict_after_train"].items():
        if v.is_floating_point():
            assert rel_err(after[k], v) < TOL, k
        else:
            assert torch.equal(after[k], v), k  # IDConv's proj BN counts two calls per forward


@pytest.mark.parametrize("arch", "tsb")
def test_restatement_state_dict_is_official(arch):
    model = OFFICIAL[arch]()
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(layout) == list(official_keys(arch))  # keys in the official order
    assert layout == official_keys(arch)               # and shapes
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


def test_restatement_fork_feat_layout():
    model = official_transxnet_t(fork_feat=True, start_level=1)
    expected = {k: s for k, s in official_keys("t").items() if not k.startswith("classifier")}
    expected.update({f"norm{i}.{p}": [c] for i, c in ((2, 96), (4, 224), (6, 448)) for p in ("weight", "bias")})
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert isinstance(model.norm0, nn.Identity) and not hasattr(model, "classifier")


def test_restatement_init_and_drop_path_schedule():
    model = official_transxnet_t(num_classes=10, drop_path_rate=0.2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert abs(torch.cat([m.weight.flatten() for m in convs]).std().item() - 0.02) < 2e-3  # trunc_normal_(0.02)
    assert all(m.bias is None or not m.bias.any() for m in convs)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert all((m.weight == 1).all() and not m.bias.any() for m in norms)
    assert all(not p.any() for p in model.relative_pos_enc)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for i in (0, 2, 4, 6) for b in model.network[i]]
    assert rates == pytest.approx([0.2 * i / 17 for i in range(18)])


def test_restatement_timm_style_drop_path():
    dp = official.DropPath(0.25).train()
    x = torch.randn(256, 3, 2, 2)
    torch.manual_seed(3)
    y = dp(x)
    torch.manual_seed(3)
    keep = torch.empty(256, 1, 1, 1).bernoulli_(0.75)
    assert torch.equal(y, x * keep.div(0.75))
    assert torch.equal(dp.eval()(x), x)


def test_restatement_gradient_checkpointing_per_stage(tiny):
    """checkpoint_stage picks the stages; as officially, grad_checkpoint=True alone checkpoints nothing."""
    kwargs = dict(image_size=tiny["image_size"], arch=tiny["arch"], num_classes=tiny["num_classes"])
    assert not any(b.grad_checkpoint for b in OfficialTransXNet(grad_checkpoint=True, **kwargs).modules()
                   if isinstance(b, official.Block))
    plain = OfficialTransXNet(**kwargs)
    plain.load_state_dict(tiny["state_dict"])
    ckpt = OfficialTransXNet(grad_checkpoint=True, checkpoint_stage=[1, 0, 1, 0], **kwargs)
    ckpt.load_state_dict(tiny["state_dict"])
    assert [b.grad_checkpoint for i in (0, 2, 4, 6) for b in ckpt.network[i]] == [1, 0, 0, 1, 0]
    for model in (plain, ckpt):
        model.eval()
    (out, gx, grads), (ref_out, ref_gx, ref_grads) = (forward_backward(ckpt, tiny["input"]),
                                                      forward_backward(plain, tiny["input"]))
    assert rel_err(out[0], ref_out[0]) < 1e-6 and rel_err(gx, ref_gx) < 1e-6
    assert all(rel_err(grads[k], ref_grads[k]) < 1e-6 for k in grads)


# ------------------------------------------------------------------------------------------------ ours vs official
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_ours_matches_official(tiny, backend, train, dtype):
    """One state_dict, same input: outputs, every gradient and the BN statistics agree."""
    ours, ref = build_pair(tiny, backend, dtype)
    ours.train(train), ref.train(train)
    # batch 4: with 2, training-mode BN statistics over 2 values per channel make the official float32 model's own
    # input gradient ~6e-6 off its float64 value (see assert_models_match)
    assert_models_match(ours, ref, torch.randn(4, 3, 64, 64, dtype=dtype))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_ours_matches_official_on_gpu(tiny, backend, train, monkeypatch):
    """float32 on the GPU kernels; TF32 off so that the official convolutions are float32 too."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ours, ref = build_pair(tiny, backend)
    ours.cuda().train(train), ref.cuda().train(train)
    assert_models_match(ours, ref, torch.randn(2, 3, 64, 64, device="cuda"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ours_matches_official_with_drop_path_and_resized_encodings(tiny, backend):
    """Training with stochastic depth (same seed, same masks) at an input the encodings were not made for."""
    ours, ref = build_pair(tiny, backend, torch.float64, drop_path_rate=0.3)
    ours.train(), ref.train()
    assert_models_match(ours, ref, tiny["input_80"].double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_ours_matches_official_fork_feat(tiny, backend, train):
    """Dense-prediction backbone: four normed stage outputs (norm0 an Identity below start_level=1)."""
    ours, ref = build_pair(tiny, backend, torch.float64, fork_feat=True, start_level=1)
    ours.train(train), ref.train(train)
    assert_models_match(ours, ref, torch.randn(2, 3, 48, 80, dtype=torch.float64))


@pytest.mark.parametrize("arch", "tsb")
def test_full_size_state_dicts_interchange(arch):
    """T/S/B: the restatement's state_dict loads strictly into ours and back, unchanged, and one eval forward
    agrees (at a small input: every stage, every encoding resized)."""
    torch.manual_seed(0)
    ref = OFFICIAL[arch](num_classes=10).eval()
    with torch.no_grad():  # visible layer scales and encodings: every token mixer must move the output
        for name, p in ref.named_parameters():
            if "layer_scale" in name or "relative_pos_enc" in name:
                p.normal_(0, 0.5)
    ours = OURS[arch](num_classes=10, backend=BACKENDS[0]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    back = OFFICIAL[arch](num_classes=10)
    back.load_state_dict(ours.state_dict(), strict=True)
    back_state = back.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(back_state[k], v), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x), ref(x)) < TOL


def test_restatement_rejects_options_it_does_not_restate():
    with pytest.raises(ValueError, match="norm_cfg"):
        official_transxnet_t(norm_cfg=dict(type="BN"))
    with pytest.raises(ValueError, match="pretrained"):
        official_transxnet_t(pretrained="transx-t.pth")
    official_transxnet_t(num_classes=0, act_cfg=dict(type="GELU"))  # the defaults are fine
