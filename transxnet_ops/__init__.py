"""transxnet-ops: fused IDConv and OSRA kernels for the TransXNet backbone.

Ops:      idconv, dwconv2d, multiscale_dwconv2d, osra_attention
          (custom ops with autograd; backends cuda/triton/cpu/reference)
Modules:  IDConv2d, OSRA                 (drop-in for the official DynamicConv2d and Attention)
Models:   models.transxnet_t/s/b         (official state_dict layout)
"""
from . import reference
from ._ext import LOAD_ERROR as extension_load_error
from .backends import available_backends, backend, set_backend
from .ops import dwconv2d, idconv, multiscale_dwconv2d, osra_attention
from .nn import IDConv2d, OSRA
from . import models
from .convert import convert  # the function (the submodule stays importable as transxnet_ops.convert)

__version__ = "0.1.0"

__all__ = [
    "idconv", "dwconv2d", "multiscale_dwconv2d", "osra_attention", "IDConv2d", "OSRA", "convert", "models", "reference",
    "set_backend", "backend", "available_backends", "extension_load_error",
]
