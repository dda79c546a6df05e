"""Registering a Triton launcher as a custom op, and the one place every Triton kernel is launched from.

On GPUs: torch.library.triton_op, so torch.compile sees the kernels themselves. Under TRITON_INTERPRET=1 (CPU
tests) wrap_triton runs kernels eagerly and cannot trace fake tensors, so the launcher becomes an opaque
torch.library.custom_op with an explicit fake implementation instead; the kernels are the same.

Launchers call `launch(kernel)[grid](*args, **constexprs)` rather than wrap_triton directly: the static kernel
report and the GPU-compile test swap `launch` for a recorder (see `recording`) and run the launchers on meta
tensors, so they see every kernel exactly as it is launched at a given shape (arguments, constexprs, warps).
"""
import contextlib
import os

import torch
from torch.library import triton_op, wrap_triton

_recorder = None  # a list while `recording()` is active: launches are appended to it instead of run


def kernel_op(name, fake):
    def register(launcher):
        if os.environ.get("TRITON_INTERPRET") == "1":
            op = torch.library.custom_op(name, mutates_args=())(launcher)
            op.register_fake(fake)
            return op
        return triton_op(name, mutates_args=())(launcher)

    return register


class _Recorded:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            _recorder.append((self.kernel, grid, args, kwargs))
        return record


def launch(kernel):
    """`launch(kernel)[grid](*args, **kwargs)`: wrap_triton(kernel), or a recorder inside `recording()`."""
    if _recorder is not None:
        return _Recorded(kernel)
    return wrap_triton(kernel)


@contextlib.contextmanager
def recording():
    """Collect (kernel, grid, args, kwargs) of every launch instead of running it (meta tensors work)."""
    global _recorder
    previous, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = previous
