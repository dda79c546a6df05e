"""The fused OSRA reduce path (transxnet_ops.reduce) against the official modules (tests/official_reference.py):
eval and training, outputs, gradients of x and of every parameter, BatchNorm running statistics and
num_batches_tracked, on every CPU backend (C++, Triton in the interpreter, reference), at sizes that are odd, not
square, not multiples of sr, smaller than the kernel, and larger than one tile (the halo path).

torch.empty returns NaN-filled memory in these tests (deterministic mode), so an output element or a workspace
partial a kernel forgets to write fails."""
import copy

import pytest
import torch
from torch import nn

import transxnet_ops
from official_reference import Attention
from transxnet_ops import OSRA, reduce
from utils import rel_err

pytestmark = pytest.mark.usefixtures("nan_filled_empty")  # unwritten outputs read as NaN

BACKENDS = transxnet_ops.available_backends("cpu")  # "cpu" / "triton" when present here, always "reference"
FUSED = [b for b in BACKENDS if b != "reference"]
DT = torch.float64


def official_path(dim, sr_ratio, dtype=DT):
    """The official Attention's `sr` and `local_conv`, with non-trivial weights and BatchNorm state."""
    att = Attention(dim, sr_ratio=sr_ratio)
    with torch.no_grad():
        for m in att.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.num_batches_tracked.fill_(3)
            elif isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.3)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2)
    return nn.ModuleDict({"sr": att.sr, "local_conv": att.local_conv}).to(dtype)


def official_forward(path, x):
    s = path["sr"](x)
    return path["local_conv"](s) + s


def run(path, x, backend, grad_out, fused=True):
    """(output, grad of x, {name: grad}) of the fused (reduce_keys) or official path."""
    x = x.detach().clone().requires_grad_()
    if fused:
        sr = path["sr"][0].conv.stride[0]
        assert reduce.fusable(path["sr"], path["local_conv"], sr)  # the official layout runs the fused op
        out = reduce.reduce_keys(x, path["sr"], path["local_conv"], sr, backend=backend)
    else:
        out = official_forward(path, x)
    (out * grad_out).sum().backward()
    return out, x.grad, {n: p.grad for n, p in path.named_parameters()}


def grad_err(actual, expected, floor):
    """Relative error with a floor on the scale: BN2 makes conv2's gradient ~0 in training (its output is
    invariant to conv2's scale up to eps), so a pure relative error would measure rounding noise."""
    assert torch.isfinite(actual).all(), "NaN/inf in a gradient (unwritten element?)"
    return ((actual.double() - expected.double()).norm() / max(expected.double().norm().item(), floor)).item()


def assert_matches_official(path, x, backend, train, tol):
    fused, ref = copy.deepcopy(path).train(train), copy.deepcopy(path).train(train)
    grad_out = torch.randn_like(official_forward(copy.deepcopy(ref), x.detach()))
    out, gx, grads = run(fused, x, backend, grad_out)
    ref_out, ref_gx, ref_grads = run(ref, x, backend, grad_out, fused=False)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert rel_err(out, ref_out) < tol
    assert rel_err(gx, ref_gx) < tol
    assert grads.keys() == ref_grads.keys() and len(grads) == 8  # conv1, bn1 w/b, conv2, bn2 w/b, local w/b
    floor = 1e-3 * ref_gx.norm().item()
    for name in grads:
        assert grads[name] is not None, name
        assert grad_err(grads[name], ref_grads[name], floor) < tol, name
    state, ref_state = fused.state_dict(), ref.state_dict()  # running statistics and num_batches_tracked
    for name in state:
        if state[name].is_floating_point():
            assert rel_err(state[name], ref_state[name]) < tol, name
        else:
            assert torch.equal(state[name], ref_state[name]), name


# (sr, H, W): odd, H != W, not multiples of sr, H or W < sr + 3 (the kernel), Ho = 1 in one dimension,
# and (sr 2, 40 x 37) -> a 20 x 19 map: more than one tile, so the Triton kernels run their halo path.
SIZES = [(2, 9, 7), (2, 3, 4), (4, 13, 10), (4, 5, 3), (8, 17, 19), (8, 10, 6), (8, 1, 12), (2, 40, 37)]
INTERPRETED = {(2, 3, 4), (4, 13, 10), (8, 10, 6), (2, 40, 37)}  # the Triton interpreter is slow: a cover


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("sr,H,W", SIZES, ids=lambda v: str(v))
def test_matches_official_float64(backend, train, sr, H, W):
    if backend == "triton" and (sr, H, W) not in INTERPRETED:
        pytest.skip("covered by the other sizes in the interpreter (every size runs on the C++ backend)")
    path = official_path(3, sr)
    x = torch.randn(2, 3, H, W, dtype=DT)
    assert_matches_official(path, x, backend, train, tol=1e-10)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_float32_as_accurate_as_official(backend, train):
    """float32 against the float64 official path: within 2e-5, or within 4x the official float32 path's own
    error (conv2's gradient in training is a sum that cancels to ~0, rounding-limited in any fp32 order)."""
    path = official_path(4, 4, torch.float32)
    x = torch.randn(3, 4, 15, 22)
    grad_out = torch.randn(3, 4, 4, 6)
    exact = run(copy.deepcopy(path).double().train(train), x.double(), None, grad_out.double(), fused=False)
    official = run(copy.deepcopy(path).train(train), x, None, grad_out, fused=False)
    fused = run(copy.deepcopy(path).train(train), x, backend, grad_out)
    assert rel_err(fused[0], exact[0]) < 2e-5 and rel_err(fused[1], exact[1]) < 2e-5
    for name, g in fused[2].items():
        assert rel_err(g, exact[2][name]) < max(2e-5, 4 * rel_err(official[2][name], exact[2][name])), name


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_half_precision_against_float64(backend, dtype, train):
    """fp32 parameters, half x (as under autocast): output in x's dtype within 1e-2 of the float64 path."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered by the sm_90 compile")
    path = official_path(4, 2, torch.float32)
    x = torch.randn(2, 4, 11, 9)
    fused = copy.deepcopy(path).train(train)
    out = reduce.reduce_keys(x.to(dtype), fused["sr"], fused["local_conv"], 2, backend=backend)
    expected = official_forward(copy.deepcopy(path).double().train(train), x.double())
    assert out.dtype == dtype and rel_err(out, expected) < 1e-2


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("momenta", [(None, None), (0.3, None), (0.05, 0.2)], ids=str)
def test_running_statistics_momentum_none_and_mixed(backend, momenta):
    """momentum=None (cumulative average, 1 / num_batches_tracked) and different momenta per BatchNorm, over
    two steps (the factor depends on num_batches_tracked)."""
    if backend == "triton" and momenta != (None, None):
        pytest.skip("the momentum arithmetic is backend-independent Python: one Triton case suffices")
    path = official_path(2, 4)
    path["sr"][0].bn.momentum, path["sr"][1].bn.momentum = momenta
    x = torch.randn(2, 2, 9, 12, dtype=DT)
    for _ in range(2):
        assert_matches_official(path, x, backend, True, tol=1e-10)
        official_forward(path.train(), x)  # advance the state as the official path would


@pytest.mark.parametrize("backend", BACKENDS)
def test_sr_ratio_one_is_local_conv_plus_identity(backend):
    if backend == "triton" and not hasattr(torch.ops.transxnet_ops, "dwconv2d_triton"):
        pytest.skip("dwconv2d has no Triton kernel on this branch")
    local_conv = official_path(5, 1)["local_conv"]
    x = torch.randn(2, 5, 7, 6, dtype=DT, requires_grad=True)
    out = reduce.reduce_keys(x, nn.Identity(), local_conv, 1, backend=backend)
    expected = local_conv(x) + x
    assert rel_err(out, expected) < 1e-12
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), [x, local_conv.weight, local_conv.bias])
    ref_grads = torch.autograd.grad((expected * g).sum(), [x, local_conv.weight, local_conv.bias])
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) < 1e-12


# ------------------------------------------------------------------------------------------------ the op itself
def op_inputs(C=2, sr=2, dtype=DT, requires_grad=True):
    path = official_path(C, sr, dtype)
    (c1, b1), (c2, b2), lc = (path["sr"][0].conv, path["sr"][0].bn), (path["sr"][1].conv, path["sr"][1].bn), \
        path["local_conv"]
    params = [c1.weight, b1.weight, b1.bias, b1.running_mean, b1.running_var, c2.weight, b2.weight, b2.bias,
              b2.running_mean, b2.running_var, lc.weight, lc.bias]
    return [p.detach().clone().requires_grad_(requires_grad and p.requires_grad) for p in params]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_gradcheck_float64(backend, train):
    params = op_inputs()
    x = torch.randn(1, 2, 6, 5, dtype=DT, requires_grad=True)
    fn = lambda x, *p: reduce.osra_reduce(x, *p, 2, 1e-5, 1e-5, train, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), fast_mode=True)


@pytest.mark.parametrize("backend", FUSED)
def test_eval_without_grad_keeps_no_intermediate(backend):
    """Inference writes only the output; a backward through such a call says what is missing."""
    params = op_inputs(requires_grad=False)
    x = torch.randn(2, 2, 9, 8, dtype=DT)
    name = "osra_reduce" + ("_triton" if backend == "triton" else "")
    out, u, stats = getattr(torch.ops.transxnet_ops, name)(x, *params, 2, 1e-5, 1e-5, False, False)
    assert u.numel() == 0 and stats.shape == (6, 2)
    assert torch.equal(stats[0], params[3]) and torch.equal(stats[4], params[9])
    ref, _ = reduce.reference_osra_reduce(x, *params, 2)
    assert rel_err(out, ref) < 1e-12
    x.requires_grad_()
    out, _u, _ = getattr(torch.ops.transxnet_ops, name)(x, *params, 2, 1e-5, 1e-5, False, False)
    with pytest.raises(RuntimeError, match="save_u"):
        out.sum().backward()


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_memory_layouts(backend, layout):
    params = op_inputs(C=3, requires_grad=False)
    x = torch.randn(2, 3, 9, 10, dtype=DT)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else \
        torch.randn(2, 6, 9, 13, dtype=DT)[:, ::2, :, 2:12]
    out, _ = reduce.osra_reduce(x, *params, 2, training=True, backend=backend)
    ref, _ = reduce.reference_osra_reduce(x, *params, 2, training=True)
    assert rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    """Every reduction is in a fixed order: two runs give bitwise identical outputs and gradients."""
    params = op_inputs(C=2, sr=4, dtype=torch.float32)
    x = torch.randn(3, 2, 21, 18, requires_grad=True)
    results = []
    for _ in range(2):
        out, stats = reduce.osra_reduce(x, *params, 4, training=True, backend=backend)
        grads = torch.autograd.grad((out * out).sum(), [x] + [p for p in params if p.requires_grad])
        results.append((out, stats, *grads))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# sr 1 runs no reduce kernel (local_conv + identity is one dwconv2d): compiled on one backend only (interpreter time)
MODULE_COMPILE_CASES = [(b, sr) for b in FUSED for sr in (2, 1) if sr > 1 or b == FUSED[0]]


@pytest.mark.parametrize("backend,sr_ratio", MODULE_COMPILE_CASES)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_osra_module_compile_fullgraph(backend, train, sr_ratio):
    """The whole OSRA module under torch.compile(fullgraph=True): q, the fused reduce path (its running-statistic
    update in training), kv, the attention with a resized relative-position bias; forward and backward as eager
    (float64: in training conv2's gradient is a sum that cancels to ~0 through BN2, rounding-limited in fp32)."""
    torch.manual_seed(0)
    eager = OSRA(4, num_heads=2, sr_ratio=sr_ratio).to(DT).train(train)
    with torch.no_grad():
        for m in eager.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    eager.backend = backend
    compiled_module = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 7, 6, dtype=DT, requires_grad=True)
    pos = torch.randn(1, 2, 42, 9, dtype=DT, requires_grad=True)  # resized to (N, M) = (42, 12 or 42) in both
    expected, got = eager(x, pos), compiled(x, pos)
    assert rel_err(got, expected) < 1e-12
    params = list(eager.parameters())
    ref_grads = torch.autograd.grad(expected.sum(), [x, pos] + params)
    grads = torch.autograd.grad(got.sum(), [x, pos] + list(compiled_module.parameters()))
    assert len(grads) == len(ref_grads) == 2 + len(params)
    floor = 1e-3 * ref_grads[0].norm().item()
    for g, e in zip(grads, ref_grads):
        assert grad_err(g, e, floor) < 1e-10
    for (name, a), b in zip(eager.state_dict().items(), compiled_module.state_dict().values()):
        assert torch.equal(a, b) if not a.is_floating_point() else rel_err(b, a) < 1e-12, name


def test_bad_input_is_reported():
    params = op_inputs(C=3, requires_grad=False)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    with pytest.raises(ValueError, match=r"conv1_weight must be .* shape \(3, 1, 5, 5\)"):
        reduce.osra_reduce(x, *params[:0], torch.randn(3, 1, 3, 3, dtype=DT), *params[1:], 2)
    with pytest.raises(ValueError, match="sr_ratio must be an int >= 2"):
        reduce.osra_reduce(x, *params, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        reduce.osra_reduce(x[:1, :, :2, :2], *params, 2, training=True)
    with pytest.raises(ValueError, match="x must be a floating-point"):
        reduce.osra_reduce(x.long(), *params, 2)
    with pytest.raises(TypeError, match="local_bias must be a torch.Tensor"):
        reduce.osra_reduce(x, *params[:-1], None, 2)
    if "cpu" in BACKENDS:  # the native op checks shapes itself (a direct torch.ops call)
        with pytest.raises(RuntimeError, match="local_weight must have shape"):
            torch.ops.transxnet_ops.osra_reduce(x, *params[:10], torch.randn(3, 1, 5, 5, dtype=DT), params[11], 2,
                                                1e-5, 1e-5, False, False)


def test_non_official_layout_runs_the_module_path():
    """A BatchNorm without running statistics (or another activation) is not fused: the modules run."""
    path = official_path(3, 2).eval()
    assert reduce.fusable(path["sr"], path["local_conv"], 2)
    ours = OSRA(3, sr_ratio=2)
    assert reduce.fusable(ours.sr, ours.local_conv, 2)  # ConvBN
    path["sr"][0].bn.track_running_stats = False
    path["sr"][0].bn.running_mean = path["sr"][0].bn.running_var = None
    assert not reduce.fusable(path["sr"], path["local_conv"], 2)
    x = torch.randn(2, 3, 8, 9, dtype=DT)
    expected = official_forward(copy.deepcopy(path), x)
    assert rel_err(reduce.reduce_keys(x, path["sr"], path["local_conv"], 2).detach(), expected) < 1e-12


# ------------------------------------------------------------------------------------------------ sm_90 compile
def test_kernels_compile_for_sm90_without_spills():
    """Every Triton launch of both kernel families at TransXNet-T shapes (bf16, batch 128) compiles for sm_90
    without spills (the figures: run with -s; T/S/B in bf16 and fp32: python scripts/sm90_reduce_report.py)."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "scripts", "sm90_reduce_report.py"), "--models", "T",
                          "--dtypes", "bf16"], cwd=root, capture_output=True, text=True, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failed or spilled" in run.stdout
