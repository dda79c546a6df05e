"""Shared test helpers."""
import torch

import transxnet_ops

HAS_CUDA = torch.cuda.is_available()


def rel_err(actual, expected):
    """Relative norm error in float64; NaN/inf in `actual` never passes."""
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "result has NaN/inf"
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def backend_device_pairs():
    """(backend, device) for every compiled backend that can run here."""
    pairs = [(b, "cpu") for b in transxnet_ops.available_backends("cpu") if b != "reference"]
    if HAS_CUDA:
        pairs += [(b, "cuda") for b in transxnet_ops.available_backends("cuda") if b != "reference"]
    return pairs
