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


def _load_triton_ops():
    """Import the Triton kernels (defines the *_triton custom ops); returns why not, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        from .triton import dwconv, idconv, idconv_weights, osra, reduce  # noqa: F401
    except Exception as exc:  # a broken triton install must not break the package
        return f"the Triton kernels failed to load ({type(exc).__name__}: {exc})"
    return None


TRITON_ERROR = _load_triton_ops()


def has_triton() -> bool:
    return TRITON_ERROR is None
