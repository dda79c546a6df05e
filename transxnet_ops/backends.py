"""Backend choice: an explicit `backend=` argument, else the global setting, else "auto".

"auto" picks the fastest implementation available for the tensors' device: the CUDA kernels on a GPU
(Triton when the extension was built without CUDA), the C++ kernels on CPU, and the pure-PyTorch
reference when nothing compiled is available.
"""
import os
import threading

from . import _ext

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

_state = threading.local()


def backend() -> str:
    """The globally selected backend name (default "auto")."""
    return getattr(_state, "name", "auto")


class set_backend:
    """Select the backend globally; also a context manager that restores the previous choice on exit.

    >>> transxnet_ops.set_backend("triton")          # from now on
    >>> with transxnet_ops.set_backend("reference"):  # only inside the block
    ...     y = transxnet_ops.idconv(x, w)
    """

    def __init__(self, name: str):
        _check_name(name)
        self._previous = backend()
        _state.name = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state.name = self._previous
        return False


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _triton_runs_on(device_type: str) -> bool:
    if not _ext.has_triton():
        return False
    if device_type == "cuda":
        return True
    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device="cpu") -> list:
    """Concrete backends that can run on `device` here (always includes "reference")."""
    device_type = device if isinstance(device, str) else device.type
    device_type = device_type.split(":")[0]
    names = []  # fastest first: "auto" takes the first
    if device_type == "cuda" and _ext.has_cuda_kernels():
        names.append("cuda")
    if device_type == "cpu" and _ext.has_cpu_kernels():
        names.append("cpu")
    if _triton_runs_on(device_type):
        names.append("triton")  # on CPU only the (slow) interpreter: after the C++ kernels
    names.append("reference")
    return names


def resolve(name, device_type: str) -> str:
    """Turn a requested backend (None = global setting) into the concrete one to run on device_type."""
    name = backend() if name is None else name
    _check_name(name)
    if name == "auto":
        return available_backends(device_type)[0]
    if name == "reference":
        return name
    if name in ("cpu", "cuda") and name != device_type:
        raise ValueError(f"backend {name!r} runs {name} tensors, but the inputs are on {device_type}")
    if name not in available_backends(device_type):
        reason = _ext.LOAD_ERROR if name in ("cpu", "cuda") and _ext.LOAD_ERROR else (
            "the extension was built without CUDA" if name == "cuda" else
            _ext.TRITON_ERROR if not _ext.has_triton() else
            "Triton runs CPU tensors only under TRITON_INTERPRET=1")
        raise RuntimeError(f"backend {name!r} is not available on {device_type}: {reason}")
    return name
