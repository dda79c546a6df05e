"""IDConv's fused weight generation (transxnet_ops.idconv_weights) against the official math, on every CPU backend,
and IDConv2d's two forward paths (eval: one proj chain on the packed pool + mean; training: proj twice) against
the official DynamicConv2d (tests/official_reference.py). torch.empty returns NaN-filled memory here
(deterministic mode), so an element a kernel forgets to write fails."""
import copy

import pytest
import torch

import transxnet_ops
from official_reference import DynamicConv2d, official_like
from transxnet_ops import IDConv2d
from transxnet_ops.idconv_weights import idconv_weights, reference_idconv_weights
from utils import check_compiled, rel_err

pytestmark = pytest.mark.usefixtures("nan_filled_empty")  # unwritten outputs read as NaN

BACKENDS = transxnet_ops.available_backends("cpu")
FUSED = [b for b in BACKENDS if b != "reference"]
DT = torch.float64


def make_inputs(B, G, C, K, layout, bias, dtype=DT, param_dtype=None, requires_grad=True):
    """layout: "separate" (kernel logits + (B, G*C) bias logits) or "packed" ((K+1)^2 logits, bias at [K, K])."""
    KL = K + 1 if layout == "packed" else K
    t = lambda *shape, dt=dtype: (torch.randn(*shape, dtype=dt) * 2).requires_grad_(requires_grad)  # noqa: E731
    pdt = param_dtype or dtype
    logits = t(B, G * C, KL, KL)
    bias_logits = t(B, G * C) if bias and layout == "separate" else None
    return logits, bias_logits, t(G, C, K, K, dt=pdt), t(G, C, dt=pdt) if bias else None


def check_against_reference(inputs, backend, tol):
    ins = [t for t in inputs if t is not None]
    out = idconv_weights(*inputs, backend=backend)
    ref = reference_idconv_weights(*[None if t is None else t.double() for t in inputs])
    assert out[0].dtype == inputs[0].dtype and rel_err(out[0], ref[0]) < tol
    has_bias = inputs[3] is not None
    assert (rel_err(out[1], ref[1]) < tol) if has_bias else out[1].numel() == 0
    gw = torch.randn_like(ref[0])
    gb = torch.randn_like(ref[1]) if has_bias else None
    loss = lambda o: (o[0] * gw).sum() + ((o[1] * gb).sum() if has_bias else 0)  # noqa: E731
    grads = torch.autograd.grad(loss(out), ins)
    ref_grads = torch.autograd.grad(loss(ref), ins)
    for g, r, t in zip(grads, ref_grads, ins):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert rel_err(g, r) < tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["separate", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B,G,C,K", [(3, 2, 5, 7), (2, 3, 4, 3), (5, 4, 3, 5), (1, 2, 1, 1), (37, 2, 3, 3)])
def test_matches_official_math_float64(backend, layout, bias, B, G, C, K):
    check_against_reference(make_inputs(B, G, C, K, layout, bias), backend, 1e-12)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                               (torch.bfloat16, torch.float32)], ids=str)
def test_lower_precision_and_mixed_dtypes(backend, dtype, param_dtype):
    """Logits in the proj's (autocast) dtype, parameters in fp32: output in the logits' dtype."""
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 (numpy); covered by the sm_90 compile")
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    check_against_reference(make_inputs(4, 2, 6, 7, "packed", True, dtype, param_dtype), backend, tol)
    check_against_reference(make_inputs(4, 3, 5, 5, "separate", True, dtype, param_dtype), backend, tol)


@pytest.mark.parametrize("backend", FUSED)
def test_strided_logits(backend):
    """Sliced views of a larger proj output (the Triton kernels read through strides, C++ copies)."""
    big = torch.randn(3, 12, 9, 9, dtype=DT)
    logits = big[:, ::2, 1:8, :7]
    bias_logits = torch.randn(6, 3, dtype=DT).t()
    weight, bias = torch.randn(2, 3, 7, 7, dtype=DT), torch.randn(2, 3, dtype=DT)
    out = idconv_weights(logits, bias_logits, weight, bias, backend=backend)
    ref = reference_idconv_weights(logits, bias_logits, weight, bias)
    assert rel_err(out[0], ref[0]) < 1e-12 and rel_err(out[1], ref[1]) < 1e-12


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["separate", "packed"])
def test_gradcheck_float64(backend, layout):
    inputs = make_inputs(3, 2, 2, 3, layout, True)
    fn = lambda *t: idconv_weights(*t, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


@pytest.mark.parametrize("backend", FUSED)
def test_deterministic(backend):
    inputs = make_inputs(33, 2, 4, 7, "packed", True, torch.float32)
    ins = [t for t in inputs if t is not None]
    results = []
    for _ in range(2):
        w, b = idconv_weights(*inputs, backend=backend)
        results.append(torch.autograd.grad((w * w).sum() + (b * b).sum(), ins))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph(backend):
    inputs = make_inputs(2, 2, 3, 3, "packed", True, torch.float32)
    ins = [t for t in inputs if t is not None]
    fn = lambda l, w, b: sum(o.sin().sum() for o in idconv_weights(l, None, w, b, backend=backend))  # noqa: E731
    check_compiled(fn, ins, "aot_eager", tol=1e-6)


def test_bad_input_is_reported():
    logits, bias_logits, weight, bias = make_inputs(2, 2, 3, 5, "separate", True, requires_grad=False)
    with pytest.raises(ValueError, match=r"logits must be \(B, G\*C, K, K\) or packed"):
        idconv_weights(logits[:, :5], bias_logits, weight, bias)
    with pytest.raises(ValueError, match="a bias needs bias_logits"):
        idconv_weights(logits, None, weight, bias)
    with pytest.raises(ValueError, match=r"bias must be \(G, C\) = \(2, 3\)"):
        idconv_weights(logits, bias_logits, weight, bias[:, :2])
    with pytest.raises(ValueError, match="bias_logits given without a bias"):
        idconv_weights(logits, bias_logits, weight, None)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        idconv_weights(logits, bias_logits, None, bias)
    if "cpu" in BACKENDS:
        with pytest.raises(RuntimeError, match="bias_logits must be"):
            torch.ops.transxnet_ops.idconv_weights(logits, bias_logits[:1], weight, bias)


# ------------------------------------------------------------------------------------------------ IDConv2d
def randomized_idconv(C, K, G, bias, dtype=DT):
    m = IDConv2d(C, kernel_size=K, num_groups=G, bias=bias, reduction_ratio=2)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        bn = m.proj[0].bn
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    return m.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("K,G,bias,size", [(7, 2, True, (11, 9)), (3, 3, False, (5, 8)), (3, 4, True, (5, 4))])
def test_idconv2d_matches_official(backend, train, K, G, bias, size):
    """Outputs, gradients of x and every parameter, proj's running statistics (two updates in training)."""
    if backend == "triton" and (K != 3 or not bias):
        pytest.skip("the interpreter runs the smallest biased case (the idconv kernel dominates its time)")
    fused = randomized_idconv(8, K, G, bias).train(train)
    fused.backend = backend
    ref = official_like(fused)
    assert isinstance(ref, DynamicConv2d)
    x = torch.randn(3, 8, *size, dtype=DT)
    outs = []
    for m in (fused, ref):
        xi = x.clone().requires_grad_()
        y = m(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=DT).reshape(y.shape)).sum().backward()
        outs.append((y, xi.grad, {n: p.grad for n, p in m.named_parameters()}, copy.deepcopy(m.state_dict())))
    (y, gx, grads, state), (ref_y, ref_gx, ref_grads, ref_state) = outs
    assert rel_err(y, ref_y) < 1e-10 and rel_err(gx, ref_gx) < 1e-10
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        assert rel_err(grads[n], ref_grads[n]) < 1e-10, n
    for n in state:
        assert (torch.equal(state[n], ref_state[n]) if not state[n].is_floating_point()
                else rel_err(state[n], ref_state[n]) < 1e-12), n
    if train:
        assert state["proj.0.bn.num_batches_tracked"].item() == (2 if bias else 1)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_idconv2d_compile_fullgraph(backend, train):
    """The whole module under torch.compile(fullgraph=True): pool, proj (twice in training), the fused weight
    generation, the conv; outputs, gradients and proj's running statistics as in eager mode."""
    eager = randomized_idconv(8, 3, 2, True, torch.float32).train(train)
    eager.backend = backend
    compiled_module = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 7, 6, requires_grad=True)
    expected, got = eager(x), compiled(x)
    assert rel_err(got, expected) < 1e-5
    ref_grads = torch.autograd.grad(expected.sum(), [x] + list(eager.parameters()))
    grads = torch.autograd.grad(got.sum(), [x] + list(compiled_module.parameters()))
    for g, e in zip(grads, ref_grads):
        assert rel_err(g, e) < 1e-5
    for (name, a), b in zip(eager.state_dict().items(), compiled_module.state_dict().values()):
        assert (torch.equal(a, b) if not a.is_floating_point() else rel_err(b, a) < 1e-6), name
