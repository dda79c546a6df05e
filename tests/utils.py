"""Shared test helpers."""
import torch

import transxnet_ops

HAS_CUDA = torch.cuda.is_available()


def rel_err(actual, expected):
    """Relative norm error in float64; NaN/inf in `actual` never passes."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "result has NaN/inf"
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def rel_or_abs_err(actual, expected):
    """rel_err, but the absolute max error where the expected value is ~0 (norm < 1e-6: e.g. gradients at
    M = 1); NaN/inf in `actual` (an element a kernel never wrote, under NaN-filled outputs) never passes."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "NaN/inf in the result (an element the kernel never wrote?)"
    if expected.norm() < 1e-6:
        return (actual - expected).abs().max().item()
    return ((actual - expected).norm() / expected.norm()).item()


TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def backend_device_pairs():
    """(backend, device) for every compiled backend that can run here."""
    pairs = [(b, "cpu") for b in transxnet_ops.available_backends("cpu") if b != "reference"]
    if HAS_CUDA:
        pairs += [(b, "cuda") for b in transxnet_ops.available_backends("cuda") if b != "reference"]
    return pairs


def check_compiled(fn, inputs, compile_backend, tol=1e-5):
    """torch.compile(fn, fullgraph=True) (no graph breaks) gives fn's output and the gradients of its sum."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend)
    expected = fn(*inputs)
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got.sum(), inputs)
    assert rel_err(got, expected) < tol
    for g, e in zip(got_grads, expected_grads):
        assert rel_err(g, e) < tol
