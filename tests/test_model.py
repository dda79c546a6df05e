"""TransXNet-T/S/B: official state_dict layout, parameter counts, official outputs, other input sizes.

Ground truth: tests/data/transxnet_{t,s,b}_state_dict_keys.json (key -> shape of the official
models/transxnet.py at LMMMEng/TransXNet commit ce2c73d), tests/data/official_tiny_transxnet.pt (a tiny
random-weight model run through that code), and the official restatement (transxnet_ops.models.official,
itself pinned to that data by test_official_model.py, which also compares gradients and BN statistics).
Full-size forwards pin a fast backend: under TRITON_INTERPRET=1 "auto" could pick the (slow) interpreter.
"""
import json
import os
import re

import pytest
import torch
from torch import nn

import transxnet_ops
from official_reference import to_official
from transxnet_ops import IDConv2d, OSRA
from transxnet_ops.convert import convert
from transxnet_ops.models import TransXNet, official_transxnet_t, transxnet_b, transxnet_s, transxnet_t
from utils import HAS_CUDA, rel_err

DATA = os.path.join(os.path.dirname(__file__), "data")
# Paper (ImageNet-1K, 224px): T 12.8M, S 26.9M, B 48.0M; exact counts of the official code at commit ce2c73d.
PARAMS = {"t": 12_834_808, "s": 26_864_068, "b": 48_009_002}
BUILDERS = {"t": transxnet_t, "s": transxnet_s, "b": transxnet_b}
BACKENDS = transxnet_ops.available_backends("cpu")
FAST = "cpu" if "cpu" in BACKENDS else "reference"
GPU_BACKENDS = [b for b in transxnet_ops.available_backends("cuda") if b != "reference"] if HAS_CUDA else []


def official_keys(arch):
    with open(os.path.join(DATA, f"transxnet_{arch}_state_dict_keys.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight TransXNet run through the official code (tests/data, made from commit ce2c73d)."""
    return torch.load(os.path.join(DATA, "official_tiny_transxnet.pt"), weights_only=False)


def build_tiny(tiny, backend):
    model = TransXNet(tiny["arch"], image_size=tiny["image_size"], num_classes=tiny["num_classes"], backend=backend)
    model.load_state_dict(tiny["state_dict"], strict=True)
    return model


def randomize_(model, seed=0):
    """Random weights everywhere and random BN statistics. Layer scales and position encodings get O(1)
    values so that every token mixer visibly moves the output (a mistake in one must show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if "running_var" in name or "norm" in name and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "layer_scale" in name and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
            elif "relative_pos_enc" in name:
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.2))
    return model


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("arch", "tsb")
def test_state_dict_layout_and_parameter_count(arch):
    model = BUILDERS[arch]()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official = official_keys(arch)
    assert list(ours) == list(official)  # same keys, same order
    assert ours == official               # same shapes
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


def test_position_encodings_and_network_layout():
    model = transxnet_t()
    shapes = [tuple(p.shape) for p in model.relative_pos_enc]
    assert shapes == [(1, 1, 3136, 49), (1, 2, 784, 49), (1, 4, 196, 49), (1, 8, 49, 49)]
    kinds = [type(m).__name__ for m in model.network]
    assert kinds == ["ModuleList", "PatchEmbed"] * 3 + ["ModuleList"]
    assert [len(model.network[i]) for i in (0, 2, 4, 6)] == [3, 3, 9, 3]
    assert [type(m).__name__ for m in model.classifier] == ["GroupNorm", "AdaptiveAvgPool2d", "Conv2d"]
    # non-square image_size, like the official to_2tuple
    rect = TransXNet("t", image_size=(224, 160), num_classes=0)
    assert rect.relative_pos_enc[0].shape == (1, 1, 56 * 40, 7 * 5)


def test_official_init():
    model = transxnet_t(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.02) < 2e-3  # trunc_normal_(std=0.02) (cut at +-2, i.e. never in practice)
    assert all(m.bias is None or not m.bias.any() for m in convs)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert all((m.weight == 1).all() and not m.bias.any() for m in norms)
    assert all(not p.any() for p in model.relative_pos_enc)


def test_drop_path_schedule():
    model = transxnet_t(drop_path_rate=0.2)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for i in (0, 2, 4, 6) for b in model.network[i]]
    expected = [0.2 * i / 17 for i in range(18)]  # linear over all 18 blocks, as officially
    assert rates == pytest.approx(expected) and isinstance(model.network[0][0].drop_path, nn.Identity)


def test_unknown_arch():
    with pytest.raises(ValueError):
        TransXNet("bogus")


def test_loads_official_format_state_dict_strictly():
    state = {k: torch.randn(shape) if shape else torch.tensor(3) for k, shape in official_keys("t").items()}
    model = transxnet_t()
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k].to(v.dtype)), k


# ------------------------------------------------------------------------------------------------ outputs
# Interpreted Triton costs ~50 s per forward of the tiny model here: it runs the training-mode forward only (every
# kernel, batch statistics); the eval-only code (folded reduce path, running statistics) is backend-independent Python.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
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
            if v.is_floating_point():
                assert rel_err(after[k], v) < 1e-5, k
            else:
                assert torch.equal(after[k], v), k


@pytest.fixture(scope="module")
def tiny_t_pair():
    """TransXNet-T with random weights (fast backend) and the official restatement with the same state_dict."""
    torch.manual_seed(0)
    twin = randomize_(official_transxnet_t(num_classes=1000)).eval()
    model = transxnet_t(num_classes=1000, backend=FAST).eval()
    model.load_state_dict(twin.state_dict(), strict=True)
    return model, twin


@pytest.mark.parametrize("size,batch", [(224, 2), (160, 1)])
def test_transxnet_t_matches_official_units(tiny_t_pair, size, batch):
    """At 224 (the encodings' own size) and at 160 (bicubic-resized encodings): same output as the official math."""
    model, twin = tiny_t_pair
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (batch, 1000)
        assert rel_err(out, twin(x)) < 1e-4


def test_transxnet_t_train_forward_backward():
    model = transxnet_t(num_classes=10, backend=FAST, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.any() for p in model.relative_pos_enc)


def test_odd_input_size():
    model = transxnet_t(num_classes=5, backend=FAST).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 5)


def test_convert_official_style_transxnet():
    """convert() on a whole model whose IDConv/OSRA are the official-style classes: identical outputs."""
    model = to_official(randomize_(transxnet_t(num_classes=10))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        convert(model, backend=FAST)
        assert sum(isinstance(m, IDConv2d) for m in model.modules()) == 18
        assert sum(isinstance(m, OSRA) for m in model.modules()) == 18
        assert all(m.backend == FAST for m in model.modules() if isinstance(m, (IDConv2d, OSRA)))
        assert rel_err(model(x), expected) < 1e-4


# ------------------------------------------------------------------------------------------------ extras
def test_fork_feat_backbone():
    """Dense-prediction mode: official norm0/2/4/6 GroupNorms (Identity below start_level), four outputs."""
    model = transxnet_t(fork_feat=True, start_level=1, backend=FAST).eval()
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: s for k, s in official_keys("t").items() if not k.startswith("classifier")}
    expected.update({f"norm{i}.{p}": [c] for i, c in ((2, 96), (4, 224), (6, 448)) for p in ("weight", "bias")})
    assert keys == expected
    assert isinstance(model.norm0, nn.Identity) and not hasattr(model, "classifier")
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 48, 16, 24), (1, 96, 8, 12), (1, 224, 4, 6), (1, 448, 2, 3)]


def test_timm_registry():
    timm = pytest.importorskip("timm")
    model = timm.create_model("transxnet_t", num_classes=7, backend="reference")
    assert isinstance(model, TransXNet) and model.classifier[-1].out_channels == 7


# ------------------------------------------------------------------------------------------------ torch.compile
# The smallest network with all four stages (one block each): compile time is dynamo/AOT tracing, ~10 s per block.
COMPILE_ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 48, 64], kernel_size=[7, 5, 3, 3], num_groups=[2, 3, 2, 4],
                    sr_ratio=[8, 4, 2, 1], num_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2])
FUSED_OPS = {"cpu": ("idconv", "osra_attention", "dwconv2d"), "cuda": ("idconv", "osra_attention", "dwconv2d"),
             "triton": ("idconv_triton", "osra_attention_triton", "dwconv2d_triton"), "reference": ()}


def compile_model(backend, image_size=64):
    torch.manual_seed(0)
    return randomize_(TransXNet(COMPILE_ARCH, image_size=image_size, num_classes=10, backend=backend))


class _Traced(Exception):
    """Raised by the recording compiler once AOT autograd has traced the graphs: nothing runs."""


def trace_graphs(model, x, grad):
    """Trace model(x) with torch.compile(fullgraph=True): dynamo (any graph break raises), then AOT autograd with
    fake tensors (the forward graph and, when grad, the partitioned backward graph). No kernel runs, so this
    also covers backends that only run interpreted here. Returns {"fw": code, "bw": code}."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import default_partition

    graphs = {}

    def partition(joint, inputs, **kwargs):
        fw, bw = default_partition(joint, inputs, **kwargs)
        graphs["bw"] = bw.code
        return fw, bw

    def record(gm, example_inputs):
        graphs["fw"] = gm.code
        raise _Traced

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=aot_autograd(fw_compiler=record, partition_fn=partition))
    with pytest.raises(Exception) as info, torch.set_grad_enabled(grad):
        compiled(x)
    if not isinstance(getattr(info.value, "inner_exception", None), _Traced):
        raise info.value
    return graphs


def graph_ops(code):
    return set(re.findall(r"torch\.ops\.transxnet_ops\.(\w+)\.default", code))


# Each trace costs ~30 s here: the C++ backend is traced (and run) in training by
# test_compiled_training_matches_eager; Triton (interpreted here) is traced in training; the reference backend
# in eval mode, which also covers the eval-only Python (BN-folded reduce path). All run on a GPU in
# test_compiled_training_on_gpu.
TRACE_CASES = [("triton", True)] * ("triton" in BACKENDS) + [("reference", False)]


@pytest.mark.parametrize("backend,train", TRACE_CASES, ids=lambda v: {True: "train", False: "eval"}.get(v, v))
def test_compile_traces_whole_model_without_graph_breaks(backend, train):
    """fullgraph=True: no graph break; the fused ops (and in training their backward ops) are in the graphs."""
    model = compile_model(backend).train(train)
    graphs = trace_graphs(model, torch.randn(2, 3, 32, 32), grad=train)
    ops = graph_ops(graphs["fw"])
    assert set(FUSED_OPS[backend]) <= ops, ops
    if backend == "reference":
        assert not {"idconv", "osra_attention", "dwconv2d"} & ops
    if train:
        suffix = "_triton" if backend == "triton" else ""
        expected = {op.replace(suffix, "") + "_backward" + suffix for op in FUSED_OPS[backend]}
        assert expected <= graph_ops(graphs["bw"]), graphs["bw"]


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
def test_compiled_training_matches_eager():
    """torch.compile(model, fullgraph=True) around the C++ kernels (aot_eager: dynamo + AOT autograd, graphs run
    eagerly): two SGD steps with BatchNorm in training mode give the eager losses, gradients, parameters and BN
    statistics (float32; the gradients as one vector, see test_official_model.assert_models_match)."""
    eager = compile_model("cpu").train()
    twin = compile_model("cpu").train()
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    runs = [(eager, eager), (twin, compiled)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m, _ in runs]
    for step in range(2):
        x = torch.randn(4, 3, 64, 64)  # stage 4 at 2x2: training-mode BN over 16 values, not 2
        outs, grads = [], []
        for (model, fwd), opt in zip(runs, opts):
            opt.zero_grad()
            out = fwd(x)
            (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
            outs.append(out.detach())
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
            opt.step()
        assert rel_err(outs[1], outs[0]) < 1e-5, step
        assert rel_err(grads[1], grads[0]) < 1e-5, step
    state, compiled_state = eager.state_dict(), twin.state_dict()
    for k, v in state.items():
        if v.is_floating_point():
            assert rel_err(compiled_state[k], v) < 1e-5, k
        else:
            assert torch.equal(compiled_state[k], v), k


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_training_on_gpu(backend, mode, monkeypatch):
    """inductor (and CUDA graphs with mode="reduce-overhead": kernels must run on torch's current stream) over
    three training steps: the same outputs and gradients as eager."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager = compile_model(backend).cuda().train()
    twin = compile_model(backend).cuda().train()
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True, mode=mode)
    for step in range(3):
        x = torch.randn(2, 3, 32, 32, device="cuda")
        results = []
        for model, fwd in ((eager, eager), (twin, compiled)):
            model.zero_grad()
            out = fwd(x)
            out.square().sum().backward()
            results.append((out.detach().clone(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        assert rel_err(results[1][0], results[0][0]) < 1e-4, step
        assert rel_err(results[1][1], results[0][1]) < 1e-4, step


@pytest.mark.skipif(os.environ.get("TRANSXNET_SLOW_TESTS") != "1" or "cpu" not in BACKENDS,
                    reason="inductor's C++ codegen of a whole model takes minutes on 2 cores: set TRANSXNET_SLOW_TESTS=1")
def test_inductor_cpu_whole_model():
    """inductor's generated C++ around the C++ kernels, training mode, float64 (so that a wrong gradient cannot
    hide in float32 rounding that inductor's fusions reorder): outputs and every gradient as eager."""
    eager = compile_model("cpu").double().train()
    twin = compile_model("cpu").double().train()
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True)
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    out, expected = compiled(x), eager(x)
    assert rel_err(out, expected) < 1e-10
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(twin.named_parameters(), eager.parameters()):
        assert (p.grad - q.grad).norm() <= 1e-9 * q.grad.norm().clamp_min(1e-6), name
