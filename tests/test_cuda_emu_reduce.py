"""The CUDA kernels of the fused OSRA reduce path and IDConv weight generation (csrc/reduce/*_cuda.cu) and their
bindings, run on the CPU emulator of tests/cuda_emu (blocks in sequence, threads as fibers, barriers enforced,
thread order varied between barriers; outputs and workspaces NaN-filled inside guard zones).

Every output and every gradient against the float64 official math (transxnet_ops.reduce.reference_osra_reduce,
transxnet_ops.idconv_weights.reference_idconv_weights) and against the C++ CPU kernels, in float32 / float16 /
bfloat16, eval and training, at sizes that are odd, not square, not multiples of sr and larger than one 16 x 16
tile; bitwise identical results under every thread schedule; bad input rejected by the bindings with a clear error.
"""
import sys
from pathlib import Path

import pytest
import torch

from transxnet_ops import _ext
from transxnet_ops.idconv_weights import reference_idconv_weights
from transxnet_ops.reduce import reference_osra_reduce

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_emu.build import build  # noqa: E402
from cuda_emu.testing import assert_schedule_independent, requires_emulator  # noqa: E402

pytestmark = requires_emulator

emu = torch.ops.transxnet_ops_emu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
REDUCE_GRADS = ["x", "conv1_weight", "bn1_weight", "bn1_bias", "conv2_weight", "bn2_weight", "bn2_bias",
                "local_weight", "local_bias"]


@pytest.fixture(scope="module", autouse=True)
def emu_lib():
    lib = build()
    if "reduce" not in lib.families:
        pytest.skip(lib.missing["reduce"])
    emu.emu_configure("vary", 0)
    yield lib
    emu.emu_configure("vary", 0)


def rel_err(actual, expected, floor=1e-30):
    """Relative norm error in float64, with a floor on the scale; NaN/inf never passes."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "NaN/inf in the result (an element the kernel never wrote?)"
    return ((actual - expected).norm() / expected.norm().clamp_min(floor)).item()


# ================================================================================================ osra_reduce
def reduce_params(C, sr, dtype):
    """conv1_weight, BN1 (weight, bias, running mean/var), conv2_weight, BN2 (...), local_weight, local_bias."""
    def bn():
        return [torch.rand(C) + 0.5, torch.rand(C) - 0.5, torch.rand(C) - 0.5, torch.rand(C) * 1.5 + 0.5]

    params = ([torch.randn(C, 1, sr + 3, sr + 3) * 0.3] + bn() + [torch.randn(C, 1, 1, 1) * 0.3 + 1] + bn()
              + [torch.randn(C, 1, 3, 3) * 0.3, torch.rand(C) * 0.4 - 0.2])
    return [p.to(dtype) for p in params]


def trainable(params):
    """The parameters the op differentiates (not the running statistics), in REDUCE_GRADS order."""
    return [params[i] for i in (0, 1, 2, 5, 6, 7, 10, 11)]


def reduce_all(ops, x, params, sr, training, gy):
    out, u, stats = ops.osra_reduce(x, *params, sr, 1e-5, 1e-5, training, True)
    grads = ops.osra_reduce_backward(gy, x, u, stats, *trainable(params), sr, 1e-5, 1e-5, training)
    return (out, stats) + tuple(grads)


def reduce_expected(x, params, sr, training, gy):
    x64 = x.double().requires_grad_()
    p64 = [p.double().requires_grad_(i not in (3, 4, 8, 9)) for i, p in enumerate(params)]
    out, stats = reference_osra_reduce(x64, *p64, sr, 1e-5, 1e-5, training)
    grads = torch.autograd.grad(out, [x64] + trainable(p64), gy.double())
    return (out.detach(), stats) + grads


# (B, C, H, W, sr): odd and non-square maps, sizes not multiples of sr, an even kernel (sr 3: k = 6), a map of
# 19 x 35 outputs (2 x 3 tiles: halos between tiles), TransXNet's 56 -> 7 at sr 8
REDUCE_CASES = [(2, 3, 9, 13, 2), (3, 2, 17, 11, 4), (2, 2, 10, 14, 3), (1, 2, 37, 70, 2), (2, 1, 57, 50, 8)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", REDUCE_CASES, ids=lambda c: "x".join(map(str, c)))
def test_osra_reduce_against_reference(case, dtype, training):
    B, C, H, W, sr = case
    torch.manual_seed(sum(case))
    x = torch.randn(B, C, H, W).to(dtype)
    params = reduce_params(C, sr, torch.float32)  # fp32 parameters next to fp16/bf16 x, as under autocast
    Ho, Wo = (H + 2 * ((sr + 3) // 2) - sr - 3) // sr + 1, (W + 2 * ((sr + 3) // 2) - sr - 3) // sr + 1
    gy = (torch.randn(B, C, Ho, Wo) + 0.5).to(dtype)
    got = reduce_all(emu, x, params, sr, training, gy)
    expected = reduce_expected(x, params, sr, training, gy)
    names = ["out", "stats"] + REDUCE_GRADS
    # Within 1e-5 (float32) / 1e-2 (half) of float64, or within 4x the error of the C++ CPU kernels, which do
    # the same math (u rounded to x's dtype as the official conv writes it; BatchNorm's batch-statistic terms
    # cancel in training). Parameter gradients are measured against a floor of 1e-3 |grad x|: BN2 makes conv2's
    # gradient ~0 in training (a sum that cancels to rounding noise).
    cpu = reduce_all(torch.ops.transxnet_ops, x, params, sr, training, gy)
    floor = 1e-3 * expected[2].norm().item()
    for i, (g, e, name) in enumerate(zip(got, expected, names)):
        assert g.shape == e.shape, name
        assert g.dtype == (torch.float32 if name == "stats" or i > 2 else dtype), name
        f = floor if i > 2 else 1e-30
        tol = max(TOL[dtype], 4 * rel_err(cpu[i], e, f))
        assert rel_err(g, e, f) < tol, (name, rel_err(g, e, f), tol)


def test_osra_reduce_parameters_in_their_own_dtypes():
    """bf16 x with bf16 parameters (no autocast) and float64 parameters: gradients come back in each dtype."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 11, 9).bfloat16()
    params = reduce_params(2, 2, torch.float32)
    params = [p.bfloat16() if i % 2 else p.double() for i, p in enumerate(params)]
    gy = torch.randn(2, 2, 6, 5).bfloat16()
    for training in (False, True):
        got = reduce_all(emu, x, params, 2, training, gy)
        expected = reduce_expected(x, params, 2, training, gy)
        floor = 1e-3 * expected[2].norm().item()
        for g, e, p in zip(got[2:], expected[2:], [x] + trainable(params)):
            assert g.dtype == p.dtype
            assert rel_err(g, e, floor) < 2e-2


def test_osra_reduce_eval_without_u():
    torch.manual_seed(1)
    x, params = torch.randn(2, 3, 13, 7), reduce_params(3, 4, torch.float32)
    out, u, stats = emu.osra_reduce(x, *params, 4, 1e-5, 1e-5, False, False)
    assert u.numel() == 0
    expected, expected_stats = reference_osra_reduce(x.double(), *[p.double() for p in params], 4)
    assert rel_err(out, expected) < 1e-5 and rel_err(stats, expected_stats) < 1e-6


def test_osra_reduce_empty_batch():
    params = reduce_params(3, 2, torch.float32)
    out, u, stats = emu.osra_reduce(torch.randn(0, 3, 8, 8), *params, 2, 1e-5, 1e-5, False, True)
    assert out.shape == (0, 3, 4, 4) and torch.equal(stats[1], params[4])
    grads = emu.osra_reduce_backward(torch.randn(0, 3, 4, 4), torch.randn(0, 3, 8, 8), u, stats, *trainable(params),
                                     2, 1e-5, 1e-5, False)
    assert grads[0].shape == (0, 3, 8, 8) and all(g.abs().sum() == 0 for g in grads[1:])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_osra_reduce_bitwise_identical_under_every_schedule(training):
    torch.manual_seed(2)
    x, params = torch.randn(2, 2, 37, 34), reduce_params(2, 2, torch.float32)  # 19 x 17 outputs: 4 tiles
    gy = torch.randn(2, 2, 19, 17)
    assert_schedule_independent(emu, lambda: reduce_all(emu, x, params, 2, training, gy))


# ================================================================================================ idconv_weights
def weights_inputs(B, G, C, K, layout, bias, dtype, param_dtype):
    """layout "separate": (B, G*C, K, K) logits + (B, G*C) bias logits; "packed": (B, G*C, K+1, K+1) logits."""
    KL = K + 1 if layout == "packed" else K
    logits = (torch.randn(B, G * C, KL, KL) * 2).to(dtype)
    bias_logits = (torch.randn(B, G * C) * 2).to(dtype) if bias and layout == "separate" else None
    weight = torch.randn(G, C, K, K).to(param_dtype)
    return logits, bias_logits, weight, torch.randn(G, C).to(param_dtype) if bias else None


def weights_all(ops, inputs, gw, gb):
    logits, bias_logits, weight, bias = inputs
    weight_out, bias_out = ops.idconv_weights(logits, bias_logits, weight, bias)
    grads = ops.idconv_weights_backward(gw, gb, logits, bias_logits, weight, bias)
    return (weight_out, bias_out) + tuple(grads)


def weights_expected(inputs, gw, gb):
    ins = [None if t is None else t.double().requires_grad_() for t in inputs]
    weight_out, bias_out = reference_idconv_weights(*ins)
    wrt = [t for t in ins if t is not None]
    outs, grads_out = [weight_out], [gw.double()]
    if ins[3] is not None:
        outs.append(bias_out)
        grads_out.append(gb.double())
    grads = iter(torch.autograd.grad(outs, wrt, grads_out, allow_unused=True))
    grads = [None if t is None else next(grads) for t in ins]
    if grads[0] is not None and ins[0].shape[-1] == ins[2].shape[-1] + 1:  # packed: unused entries get 0
        grads[0] = torch.zeros_like(ins[0]) if grads[0] is None else grads[0]
    return [weight_out.detach(), bias_out.detach()] + grads


# (B, G, C, K, layout, bias): both layouts, with and without bias, G = 2 (TransXNet), 3 and 5 (two passes of the
# backward's 4-group register chunk), B not a multiple of the 8 sample phases, C * slots not a multiple of 32
WEIGHT_CASES = [(3, 2, 5, 3, "separate", True), (9, 2, 7, 3, "packed", True), (2, 3, 3, 5, "packed", False),
                (11, 5, 3, 3, "separate", True), (4, 5, 2, 3, "packed", True), (2, 2, 3, 7, "separate", False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", WEIGHT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_idconv_weights_against_reference(case, dtype):
    B, G, C, K, layout, bias = case
    torch.manual_seed(B * 100 + G * 10 + C)
    inputs = weights_inputs(B, G, C, K, layout, bias, dtype, torch.float32)
    gw = torch.randn(B, C, K, K).to(dtype)
    gb = torch.randn(B, C).to(dtype) if bias else torch.empty(0, dtype=dtype)
    got = weights_all(emu, inputs, gw, gb)
    expected = weights_expected(inputs, gw, gb)
    cpu = weights_all(torch.ops.transxnet_ops, inputs, gw, gb)
    names = ["weight_out", "bias_out", "grad_logits", "grad_bias_logits", "grad_weight", "grad_bias"]
    for i, (g, e, name) in enumerate(zip(got, expected, names)):
        if e is None or (name == "bias_out" and not bias):
            assert g.numel() == 0, name
            continue
        assert g.shape == e.shape and g.dtype == (dtype if i < 4 else torch.float32), name
        tol = max(TOL[dtype], 4 * rel_err(cpu[i], e))
        assert rel_err(g, e) < tol, (name, rel_err(g, e), tol)


def test_idconv_weights_parameters_in_their_own_dtypes():
    torch.manual_seed(3)
    inputs = list(weights_inputs(5, 2, 3, 3, "separate", True, torch.float16, torch.bfloat16))
    inputs[3] = inputs[3].double()
    gw, gb = torch.randn(5, 3, 3, 3).half(), torch.randn(5, 3).half()
    got = weights_all(emu, inputs, gw, gb)
    expected = weights_expected(inputs, gw, gb)
    assert got[4].dtype == torch.bfloat16 and got[5].dtype == torch.float64
    for g, e in zip(got, expected):
        assert rel_err(g, e) < 2e-2


def test_idconv_weights_bitwise_identical_under_every_schedule():
    torch.manual_seed(4)
    inputs = weights_inputs(19, 5, 9, 3, "packed", True, torch.float32, torch.float32)
    gw, gb = torch.randn(19, 9, 3, 3), torch.randn(19, 9)
    assert_schedule_independent(emu, lambda: weights_all(emu, inputs, gw, gb))


# ================================================================================================ bad input
def test_bad_input_is_rejected_by_the_bindings():
    params = reduce_params(2, 2, torch.float32)
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        emu.osra_reduce(x.double(), *params, 2, 1e-5, 1e-5, False, True)
    with pytest.raises(RuntimeError, match="more than 1 value per channel"):
        emu.osra_reduce(torch.randn(1, 2, 1, 1), *params, 2, 1e-5, 1e-5, True, True)
    with pytest.raises(RuntimeError, match="sr_ratio <= 97"):
        emu.osra_reduce(x, torch.randn(2, 1, 101, 101), *params[1:], 98, 1e-5, 1e-5, False, True)
    out, u, stats = emu.osra_reduce(x, *params, 2, 1e-5, 1e-5, True, True)
    with pytest.raises(RuntimeError, match=r"grad_out and u must be \(B, C, Ho, Wo\)"):
        emu.osra_reduce_backward(out[:, :, :3], x, u, stats, *trainable(params), 2, 1e-5, 1e-5, True)
    with pytest.raises(RuntimeError, match=r"stats must be \(6, C\) float32"):
        emu.osra_reduce_backward(out, x, u, stats.double(), *trainable(params), 2, 1e-5, 1e-5, True)
    logits, bias_logits, weight, bias = weights_inputs(2, 2, 3, 3, "separate", True, torch.float32, torch.float32)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        emu.idconv_weights(logits.double(), bias_logits.double(), weight, bias)
    with pytest.raises(RuntimeError, match=r"grad_weight_out must be \(B, C, K, K\)"):
        emu.idconv_weights_backward(torch.randn(2, 3, 3, 2), torch.randn(2, 3), logits, bias_logits, weight, bias)
    with pytest.raises(RuntimeError, match=r"grad_bias_out must be \(B, C\)"):
        emu.idconv_weights_backward(torch.randn(2, 3, 3, 3), torch.randn(3), logits, bias_logits, weight, bias)


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="the extension here was built without CUDA")
def test_cuda_kernels_are_registered():
    for op in ("osra_reduce", "osra_reduce_backward", "idconv_weights", "idconv_weights_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"transxnet_ops::{op}", "CUDA"), op
