// OSRA attention core: out = softmax(q k^T * scale + bias) v, flash-style.
//   q (B,H,N,D), k and v (B,H,M,D), bias (Bb,Hb,N,M) with Bb in {1,B}, Hb in {1,H} (broadcast over
//   batch / heads when 1). The device entry points receive tensors checked by check_attn_inputs
//   (ops.cpp) and made contiguous. Forward returns (out (B,H,N,D) in q's dtype, lse (B,H,N) in the accumulation
//   type: float64 for float64 inputs, else float32),
//   lse = log-sum-exp of each score row, saved so backward recomputes the probabilities without ever
//   storing the N x M matrix.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <tuple>

namespace transxnet_ops {

std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, double scale);
// Returns (grad_q, grad_k, grad_v, grad_bias). grad_bias has bias's shape (Bb,Hb,N,M) and dtype
// (summed over the batch/heads it is broadcast over) when bias is given and bias_requires_grad,
// else an empty tensor of shape (0,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> osra_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse,
    double scale, bool bias_requires_grad);
#ifdef TRANSXNET_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> osra_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse,
    double scale, bool bias_requires_grad);
#endif

}  // namespace transxnet_ops
