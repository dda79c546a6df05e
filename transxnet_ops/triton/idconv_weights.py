"""IDConv weight-generation Triton launchers, registered as custom ops with the contract of the C++ ops
(csrc/reduce/idconv_weights.h):
  transxnet_ops::idconv_weights_triton(logits, bias_logits?, weight, bias?) -> (weight_out, bias_out)
  transxnet_ops::idconv_weights_backward_triton(grad_weight_out, grad_bias_out, logits, bias_logits?, weight, bias?)
      -> (grad_logits, grad_bias_logits, grad_weight, grad_bias)
One launch each. Inputs are checked by transxnet_ops.idconv_weights; autograd is registered in transxnet_ops.ops.
"""
from typing import Optional

import torch
import triton

from .._fakes import idconv_weights_backward_fake, idconv_weights_fake
from ._idconv_weights_kernels import _idconv_weights_bwd, _idconv_weights_fwd
from ._register import kernel_op, launch

_TILE_ELEMS = 2048  # groups x samples x slots per program


def _pow2_at_least(n, cap=1 << 30):
    p = 1
    while p < cap and p < n:
        p *= 2
    return p


def _geometry(logits, weight, bias):
    """(G, C, K, packed, slots per (sample, channel), padded groups, stride args)."""
    G, C, K = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    packed = logits.shape[2] == K + 1
    n_slots = (K + 1) ** 2 if packed else K * K + (bias is not None)
    return G, C, K, packed, n_slots, _pow2_at_least(G)


def _strides(logits, bias_logits):
    lb = bias_logits.stride() if bias_logits is not None else (0, 0)
    return (*logits.stride(), *lb)


@kernel_op("transxnet_ops::idconv_weights_triton", idconv_weights_fake)
def idconv_weights_triton(logits: torch.Tensor, bias_logits: Optional[torch.Tensor], weight: torch.Tensor,
                          bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    G, C, K, packed, n_slots, GP = _geometry(logits, weight, bias)
    B = logits.shape[0]
    weight_out = logits.new_empty(B, C, K, K)
    bias_out = logits.new_empty(B, C) if bias is not None else logits.new_empty(0)
    if B * C == 0:
        return weight_out, bias_out
    BQ = _pow2_at_least(n_slots, 64)
    BB = _pow2_at_least(B, max(1, _TILE_ELEMS // (GP * BQ)))
    n_q, n_b = triton.cdiv(n_slots, BQ), triton.cdiv(B, BB)
    launch(_idconv_weights_fwd)[(C * n_q * n_b,)](
        logits, bias_logits if bias_logits is not None else logits, weight, bias if bias is not None else weight,
        weight_out, bias_out if bias is not None else weight_out, B, C, *_strides(logits, bias_logits), n_slots, n_q,
        n_b, G=G, GP=GP, K=K, PACKED=packed, HAS_BIAS=bias is not None, BB=BB, BQ=BQ,
        IS_FP64=logits.dtype == torch.float64, num_warps=4 if GP * BB * BQ >= 1024 else 2)
    return weight_out, bias_out


@kernel_op("transxnet_ops::idconv_weights_backward_triton", idconv_weights_backward_fake)
def idconv_weights_backward_triton(grad_weight_out: torch.Tensor, grad_bias_out: torch.Tensor, logits: torch.Tensor,
                                   bias_logits: Optional[torch.Tensor], weight: torch.Tensor,
                                   bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    grad_weight_out, grad_bias_out = grad_weight_out.contiguous(), grad_bias_out.contiguous()
    G, C, K, packed, n_slots, GP = _geometry(logits, weight, bias)
    B = logits.shape[0]
    grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    grad_bias_logits = (torch.empty_like(bias_logits, memory_format=torch.contiguous_format)
                        if bias_logits is not None else logits.new_empty(0))
    grad_weight = torch.empty_like(weight)
    grad_bias = torch.empty_like(bias) if bias is not None else weight.new_empty(0)
    if C == 0:
        return grad_logits, grad_bias_logits, grad_weight, grad_bias
    # small slot blocks: the batch loop is sequential per program, so spread the channels' slots wide
    BQ = _pow2_at_least(n_slots, 16)
    BB = _pow2_at_least(max(B, 1), max(1, _TILE_ELEMS // (GP * BQ)))
    n_q = triton.cdiv(n_slots, BQ)
    launch(_idconv_weights_bwd)[(C * n_q,)](
        logits, bias_logits if bias_logits is not None else logits, weight, bias if bias is not None else weight,
        grad_weight_out, grad_bias_out if bias is not None else grad_weight_out, grad_logits,
        grad_bias_logits if bias_logits is not None else grad_logits, grad_weight,
        grad_bias if bias is not None else grad_weight, B, C, *_strides(logits, bias_logits), n_slots, n_q,
        G=G, GP=GP, K=K, PACKED=packed, HAS_BIAS=bias is not None, BB=BB, BQ=BQ,
        IS_FP64=logits.dtype == torch.float64, num_warps=4 if GP * BB * BQ >= 1024 else 2)
    return grad_logits, grad_bias_logits, grad_weight, grad_bias
