"""Loading the compiled extension (transxnet_ops._C) and telling which native kernels it holds."""
import importlib.util

try:
    from . import _C  # noqa: F401  (importing registers the torch.ops.transxnet_ops.* C++ kernels)

    LOAD_ERROR = None
except ImportError as exc:  # not built: the reference and Triton backends still work
    _C = None
    LOAD_ERROR = (
        f"the compiled extension transxnet_ops._C is not available ({exc}); build it with "
        "`pip install --no-build-isolation -e .` to get the 'cpu' and 'cuda' backends"
    )


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
