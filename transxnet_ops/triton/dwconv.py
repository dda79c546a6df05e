"""Static / multi-scale depthwise convolution Triton launchers, registered as custom ops with the contract of
the C++ ops (csrc/dwconv/dwconv.h):
  transxnet_ops::dwconv2d_triton(x, weight, bias?, split_sizes, kernel_sizes) -> y
  transxnet_ops::dwconv2d_backward_triton(grad_y, x, weight, split_sizes, kernel_sizes, bias_requires_grad)
      -> (grad_x, grad_weight, grad_bias)
weight is the packed 1-D concatenation of each segment's (c_s, 1, k_s, k_s) taps; up to four segments with
K <= 9 (MS-FFN's 1/3/5/7) run in one launch. grad_weight and grad_bias come from fp32 partials per sample chunk,
summed in a fixed order by a second small kernel (deterministic, no atomics); grad_bias is (C,) when
bias_requires_grad, else empty (0,). Inputs are checked by transxnet_ops.ops; autograd is registered there.
"""
from typing import List, Optional

import torch

from .._fakes import empty_activation, dwconv2d_backward_fake, dwconv2d_fake
from . import _depthwise_launch as dw
from ._register import kernel_op


@kernel_op("transxnet_ops::dwconv2d_triton", dwconv2d_fake)
def dwconv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], split_sizes: List[int],
                    kernel_sizes: List[int]) -> torch.Tensor:
    # x dense in its layout (NCHW or channels_last: no copy for either); y in the same layout
    x, weight = dw.dense_activation(x, x), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = empty_activation(x)
    if y.numel() > 0:
        dw.forward(x, weight, bias, y, dw.segments_of(split_sizes, kernel_sizes), per_sample=False)
    return y


@kernel_op("transxnet_ops::dwconv2d_backward_triton", dwconv2d_backward_fake)
def dwconv2d_backward_triton(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, split_sizes: List[int],
                             kernel_sizes: List[int], bias_requires_grad: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_y, x, weight = dw.dense_activation(grad_y, x), dw.dense_activation(x, x), weight.contiguous()
    grad_x = empty_activation(x)
    if x.numel() == 0:  # no taps see any data
        grad_bias = x.new_zeros(x.shape[1]) if bias_requires_grad else x.new_empty(0)
        return grad_x, torch.zeros_like(weight), grad_bias
    grad_weight = torch.empty_like(weight)
    grad_bias = x.new_empty(x.shape[1]) if bias_requires_grad else None
    dw.backward(grad_y, x, weight, grad_x, grad_weight, grad_bias, dw.segments_of(split_sizes, kernel_sizes),
                per_sample=False)
    return grad_x, grad_weight, grad_bias if grad_bias is not None else x.new_empty(0)
