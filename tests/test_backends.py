"""Backend selection: argument > global setting (also a context manager) > "auto"."""
import pytest
import torch

import transxnet_ops
from transxnet_ops import backends


def test_reference_always_available():
    assert transxnet_ops.available_backends("cpu")[-1] == "reference"
    assert transxnet_ops.available_backends(torch.device("cuda"))[-1] == "reference"


def test_auto_prefers_compiled_kernels_on_cpu():
    expected = "cpu" if "cpu" in transxnet_ops.available_backends("cpu") else "reference"
    assert backends.resolve("auto", "cpu") == expected


def test_set_backend_global_and_context_manager():
    assert transxnet_ops.backend() == "auto"
    with transxnet_ops.set_backend("reference"):
        assert transxnet_ops.backend() == "reference"
        assert backends.resolve(None, "cpu") == "reference"
        assert backends.resolve("auto", "cpu") == backends.available_backends("cpu")[0]  # argument wins
    assert transxnet_ops.backend() == "auto"
    transxnet_ops.set_backend("reference")
    try:
        assert transxnet_ops.backend() == "reference"
    finally:
        transxnet_ops.set_backend("auto")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        transxnet_ops.set_backend("cudnn")
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        transxnet_ops.idconv(x, w, backend="fast")


def test_device_backend_mismatch_is_explained():
    x, w = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="backend 'cuda' runs cuda tensors"):
        transxnet_ops.idconv(x, w, backend="cuda")


def test_selected_backend_is_used(monkeypatch):
    """The global choice reaches the op: the reference path must be called under set_backend('reference')."""
    calls = []
    real = transxnet_ops.reference.idconv
    monkeypatch.setattr(transxnet_ops.reference, "idconv", lambda *a: calls.append(1) or real(*a))
    x, w = torch.randn(1, 2, 5, 5), torch.randn(1, 2, 3, 3)
    with transxnet_ops.set_backend("reference"):
        transxnet_ops.idconv(x, w)
    assert calls == [1]
