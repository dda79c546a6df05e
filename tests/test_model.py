"""TransXNet-T/S/B: official state_dict layout, parameter counts, and the official outputs."""
import json
import os

import pytest
import torch

import transxnet_ops
from transxnet_ops.models import TransXNet, transxnet_b, transxnet_s, transxnet_t
from utils import backend_device_pairs, rel_err

DATA = os.path.join(os.path.dirname(__file__), "data")
# Paper (ImageNet-1K, 224px): T 12.8M, S 26.9M, B 48.0M; exact counts of the official code at commit ce2c73d.
PARAMS = {"t": 12_834_808, "s": 26_864_068, "b": 48_009_002}
BUILDERS = {"t": transxnet_t, "s": transxnet_s, "b": transxnet_b}
# Whole-model runs on CPU use the C++ kernels and the reference; the Triton interpreter is far too slow for a
# model (the op tests cover Triton there).
BACKENDS = [b for b, d in backend_device_pairs() if d == "cpu" and b != "triton"] + ["reference"]


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight TransXNet run through the official code (tests/data, made from commit ce2c73d)."""
    return torch.load(os.path.join(DATA, "official_tiny_transxnet.pt"), weights_only=False)


def build_tiny(tiny, backend):
    model = TransXNet(tiny["arch"], image_size=tiny["image_size"], num_classes=tiny["num_classes"], backend=backend)
    model.load_state_dict(tiny["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("arch", "tsb")
def test_state_dict_layout_and_parameter_count(arch):
    model = BUILDERS[arch]()
    official = json.load(open(os.path.join(DATA, f"transxnet_{arch}_state_dict_keys.json")))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(official)
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


def test_loads_official_format_state_dict_strictly():
    official = json.load(open(os.path.join(DATA, "transxnet_t_state_dict_keys.json")))
    state = {k: torch.randn(shape) if shape else torch.tensor(3) for k, shape in official.items()}
    model = transxnet_t()
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_official_outputs_eval(tiny, backend):
    model = build_tiny(tiny, backend).eval()
    with torch.no_grad():
        assert rel_err(model(tiny["input"]), tiny["output_eval"]) < 1e-5
        # a size the position encodings were not made for: bicubic resize, like the official code
        assert rel_err(model(tiny["input_80"]), tiny["output_eval_80"]) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_official_outputs_train_and_bn_updates(tiny, backend):
    model = build_tiny(tiny, backend).train()
    assert rel_err(model(tiny["input"]), tiny["output_train"]) < 1e-5
    after = model.state_dict()
    for k, v in tiny["state_dict_after_train"].items():
        if "running" in k or "num_batches" in k:
            assert rel_err(after[k].double(), v.double()) < 1e-5 if v.is_floating_point() else torch.equal(after[k], v), k


def test_transxnet_t_forward_backward_224():
    model = transxnet_t(num_classes=10)
    x = torch.randn(2, 3, 224, 224)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    grads = [p.grad for p in model.relative_pos_enc]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_odd_input_size():
    model = transxnet_t(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 5)
