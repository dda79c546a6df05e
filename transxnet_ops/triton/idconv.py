"""IDConv Triton launchers, registered as custom ops with the contract of the C++ ops (csrc/idconv/idconv.h):
  transxnet_ops::idconv_triton(x, weight, bias?) -> y
  transxnet_ops::idconv_backward_triton(grad_y, x, weight) -> (grad_x, grad_weight, grad_bias)
x (B,C,H,W), weight (B,C,K,K) with K odd, bias (B,C) or None; outputs are contiguous, in the input dtype, and
grad_bias is always computed. Inputs are checked by transxnet_ops.ops; autograd is registered there too.
"""
from typing import Optional

import torch
import triton

from .._fakes import idconv_backward_fake, idconv_fake
from ._idconv_kernels import _idconv_bwd_dw, _idconv_bwd_reduce, _idconv_fwd
from ._register import kernel_op, launch


def _pow2_at_least(n, cap):
    """min(cap, next power of two >= n) by comparisons only: under torch.compile with dynamic shapes n is a
    SymInt, and this guards on a size bucket (e.g. n > 8) instead of specialising on n."""
    p = 1
    while p < cap and p < n:
        p *= 2
    return p


def _config(H, W):
    """Tile and warp count: tiles up to 16 x 64 (one TransXNet 56-wide row fits one tile row); small maps
    (7x7, 14x14) get a matching small tile and fewer warps instead of idle threads."""
    block_h = _pow2_at_least(H, 16)
    block_w = _pow2_at_least(W, 64)
    elems = block_h * block_w
    num_warps = 4 if elems >= 512 else 2 if elems >= 128 else 1
    n_tiles = triton.cdiv(H, block_h) * triton.cdiv(W, block_w)
    return dict(BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps), n_tiles


def _launch_conv(x, weight, bias, y, flip):
    """y <- bias + x (*) weight (flipped if `flip`), every element of y written. All tensors contiguous."""
    B, C, H, W = x.shape
    K = int(weight.shape[-1])  # a constexpr of the kernel: specialise on it under dynamic shapes
    cfg, n_tiles = _config(H, W)
    launch(_idconv_fwd)[(B * C * n_tiles,)](
        x, weight, bias if bias is not None else x, y, H, W,  # x stands in for the absent bias pointer
        K=K, FLIP=flip, HAS_BIAS=bias is not None, IS_FP64=x.dtype == torch.float64, **cfg)


def _launch_grad_weight(grad_y, x, partial, grad_weight, grad_bias):
    """grad_weight, grad_bias <- per-tile partial sums (written into `partial`), reduced over tiles."""
    B, C, H, W = x.shape
    K = int(grad_weight.shape[-1])
    cfg, n_tiles = _config(H, W)
    is_fp64 = x.dtype == torch.float64
    launch(_idconv_bwd_dw)[(B * C * n_tiles,)](grad_y, x, partial, H, W, K=K, IS_FP64=is_fp64, **cfg)
    launch(_idconv_bwd_reduce)[(B * C,)](partial, grad_weight, grad_bias, n_tiles, KK=K * K,
                                              IS_FP64=is_fp64, BLOCK_KK=triton.next_power_of_2(K * K + 1))


def _partial_buffer(x, K):
    _, n_tiles = _config(*x.shape[2:])
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty(x.shape[0] * x.shape[1], n_tiles, K * K + 1, device=x.device, dtype=acc_dtype)


@kernel_op("transxnet_ops::idconv_triton", idconv_fake)
def idconv_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # NCHW-contiguous copies of channels_last / strided inputs: the kernels index planes densely.
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel() > 0:
        _launch_conv(x, weight, bias, y, flip=False)
    return y


@kernel_op("transxnet_ops::idconv_backward_triton", idconv_backward_fake)
def idconv_backward_triton(grad_y: torch.Tensor, x: torch.Tensor,
                           weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_y, x, weight = grad_y.contiguous(), x.contiguous(), weight.contiguous()
    B, C = x.shape[:2]
    K = weight.shape[-1]
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel() == 0:  # empty map: no taps see any data (B*C == 0 makes the zeros empty as well)
        return grad_x, torch.zeros_like(weight), x.new_zeros(B, C)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
    grad_bias = x.new_empty(B, C)
    _launch_conv(grad_y, weight, None, grad_x, flip=True)
    _launch_grad_weight(grad_y, x, _partial_buffer(x, K), grad_weight, grad_bias)
    return grad_x, grad_weight, grad_bias
