"""IDConv Triton launchers, registered as custom ops with the contract of the C++ ops (csrc/idconv/idconv.h):
  transxnet_ops::idconv_triton(x, weight, bias?) -> y
  transxnet_ops::idconv_backward_triton(grad_y, x, weight) -> (grad_x, grad_weight, grad_bias)
x (B,C,H,W), weight (B,C,K,K) with K odd, bias (B,C) or None; y and grad_x are in x's layout (NCHW or
channels_last, _fakes.activation_format), the other outputs contiguous, all in the input dtype, and
grad_bias is always computed. The kernels are the depthwise family of _depthwise_kernels.py with per-sample
weights (one segment); the backward is one fused launch for K <= 9 and owns each plane's weight gradient, so it
needs no reduction pass. Inputs are checked by transxnet_ops.ops; autograd is registered there too.
"""
from typing import Optional

import torch

from .._fakes import empty_activation, idconv_backward_fake, idconv_fake
from . import _depthwise_launch as dw
from ._register import kernel_op


def _segments(x, weight):
    return dw.segments_of([x.shape[1]], [int(weight.shape[-1])])  # K is a constexpr: specialise on it


@kernel_op("transxnet_ops::idconv_triton", idconv_fake)
def idconv_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # x dense in its layout (NCHW or channels_last: no copy for either); y in the same layout
    x, weight = dw.dense_activation(x, x), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = empty_activation(x)
    if y.numel() > 0:
        dw.forward(x, weight, bias, y, _segments(x, weight), per_sample=True)
    return y


@kernel_op("transxnet_ops::idconv_backward_triton", idconv_backward_fake)
def idconv_backward_triton(grad_y: torch.Tensor, x: torch.Tensor,
                           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_y, x, weight = dw.dense_activation(grad_y, x), dw.dense_activation(x, x), weight.contiguous()
    B, C = x.shape[:2]
    grad_x = empty_activation(x)
    if x.numel() == 0:  # empty map: no taps see any data (B*C == 0 makes the zeros empty as well)
        return grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format), x.new_zeros(B, C)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    grad_bias = x.new_empty(B, C)
    dw.backward(grad_y, x, weight, grad_x, grad_weight, grad_bias, _segments(x, weight), per_sample=True)
    return grad_x, grad_weight, grad_bias
