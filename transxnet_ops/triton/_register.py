"""Registering a Triton launcher as a custom op.

On GPUs: torch.library.triton_op, so torch.compile sees the kernels themselves. Under TRITON_INTERPRET=1 (CPU
tests) wrap_triton runs kernels eagerly and cannot trace fake tensors, so the launcher becomes an opaque
torch.library.custom_op with an explicit fake implementation instead; the kernels are the same.
"""
import os

import torch
from torch.library import triton_op


def kernel_op(name, fake):
    def register(launcher):
        if os.environ.get("TRITON_INTERPRET") == "1":
            op = torch.library.custom_op(name, mutates_args=())(launcher)
            op.register_fake(fake)
            return op
        return triton_op(name, mutates_args=())(launcher)

    return register
