"""The compiled extension builds, imports, registers its ops, and (where nvcc exists) holds the CUDA kernels."""
import os
import shutil

import pytest
import torch

import transxnet_ops
from transxnet_ops import _ext

OPS = ["idconv", "idconv_backward", "osra_attention", "osra_attention_backward"]
NVCC = os.path.exists("/usr/local/cuda/bin/nvcc") or shutil.which("nvcc")


def test_extension_imports():
    assert _ext.LOAD_ERROR is None, _ext.LOAD_ERROR
    assert "cpu" in transxnet_ops.available_backends("cpu")


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"transxnet_ops::{op}", "CPU")


@pytest.mark.skipif(torch.version.cuda is None or not NVCC or os.environ.get("TRANSXNET_NO_CUDA") == "1",
                    reason="CPU-only torch, no nvcc, or TRANSXNET_NO_CUDA=1: the CUDA sources are not built")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_compiled_and_linked(op):
    assert _ext.has_cuda_kernels()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"transxnet_ops::{op}", "CUDA")
