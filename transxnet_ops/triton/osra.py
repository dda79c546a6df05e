"""OSRA attention Triton launchers, registered as custom ops (contract of csrc/osra/attn.h):
  transxnet_ops::osra_attention_triton(q, k, v, bias?, scale) -> (out, lse)
  transxnet_ops::osra_attention_backward_triton(grad_out, q, k, v, bias?, out, lse, scale, bias_requires_grad)
      -> (grad_q, grad_k, grad_v, grad_bias)
Autograd is registered in transxnet_ops/ops.py."""
from typing import Optional

import torch
import triton

from .._fakes import osra_attention_backward_fake, osra_attention_fake
from ._register import kernel_op, launch
from ._osra_kernels import _attn_bwd_dbias, _attn_bwd_dkdv, _attn_bwd_dq, _attn_fwd


def _config(q, k):
    N, M, D = q.shape[2], k.shape[2], q.shape[3]
    block_d = max(16, triton.next_power_of_2(D))
    block_m = min(64, max(16, triton.next_power_of_2(M)))
    block_n = 64 if block_d <= 64 else 32
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d,
                IS_FP32=q.dtype == torch.float32, IS_FP64=q.dtype == torch.float64)


def _bias_strides(bias):
    """(batch, head, row) strides of the (1|B, 1|H, N, M) bias, 0 along broadcast dims."""
    if bias is None:
        return 0, 0, 0
    return (0 if bias.shape[0] == 1 else bias.stride(0), 0 if bias.shape[1] == 1 else bias.stride(1), bias.stride(2))


def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


@kernel_op("transxnet_ops::osra_attention_triton", osra_attention_fake)
def osra_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v, bias = _contiguous(q, k, v, bias)
    B, H, N, D = q.shape
    M = k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    cfg = _config(q, k)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), B * H)
    launch(_attn_fwd)[grid](q, k, v, bias if bias is not None else q, out, lse, N, M, D, H, scale,
                                 *_bias_strides(bias), HAS_BIAS=bias is not None, **cfg)
    return out, lse


@kernel_op("transxnet_ops::osra_attention_backward_triton", osra_attention_backward_fake)
def osra_attention_backward_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   bias: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, scale: float,
                                   bias_requires_grad: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, q, k, v, bias, out, lse = _contiguous(grad_out, q, k, v, bias, out, lse)
    B, H, N, D = q.shape
    M = k.shape[2]
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    delta = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(-1)
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _config(q, k)
    strides = _bias_strides(bias)
    bias_arg = bias if bias is not None else q
    common = (N, M, D, H, scale, *strides)
    launch(_attn_bwd_dq)[(triton.cdiv(N, cfg["BLOCK_N"]), B * H)](
        q, k, v, bias_arg, grad_out, lse, delta, grad_q, *common, HAS_BIAS=bias is not None, **cfg)
    launch(_attn_bwd_dkdv)[(triton.cdiv(M, cfg["BLOCK_M"]), B * H)](
        q, k, v, bias_arg, grad_out, lse, delta, grad_k, grad_v, *common, HAS_BIAS=bias is not None, **cfg)
    if bias is None or not bias_requires_grad:
        return grad_q, grad_k, grad_v, q.new_empty(0)
    Bb, Hb = bias.shape[:2]
    grad_bias = torch.empty_like(bias)
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(M, cfg["BLOCK_M"]), Bb * Hb)
    launch(_attn_bwd_dbias)[grid](q, k, v, bias, grad_out, lse, delta, grad_bias, *common, Hb,
                                       B // Bb, H // Hb, **cfg)
    return grad_q, grad_k, grad_v, grad_bias
