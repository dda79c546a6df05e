// IDConv's per-sample kernels and bias from proj's output (official DynamicConv2d), in one op:
//   weight_out[b, c] = sum_g softmax_g(logits[b, g*C + c])[g] * weight[g, c]         (each of the K x K taps)
//   bias_out[b, c]   = sum_g softmax_g(bias_logits[b, g*C + c])[g] * bias[g, c]
// Inputs:
//   logits      (B, G*C, K, K), or "packed" (B, G*C, K+1, K+1): proj run once on the KxK pool with the global
//               mean appended at [K, K] (eval mode, where proj is affine per position): the kernel logits are
//               [..., :K, :K] and, when bias_logits is absent, the bias logits are [..., K, K]; the other
//               entries of row/column K are ignored (zero gradient).
//   bias_logits (B, G*C) or absent; weight (G, C, K, K); bias (G, C) or absent.
//   logits/bias_logits share a dtype (the outputs' dtype); weight and bias may have their own (autocast).
// Outputs: weight_out (B, C, K, K) and bias_out (B, C) (an empty (0,) tensor without bias), contiguous.
// Backward: grad_logits (shaped like logits, contiguous), grad_bias_logits ((B, G*C), or (0,) when bias_logits
// was absent), grad_weight (G, C, K, K), grad_bias ((G, C) or (0,)); the parameter gradients are reduced over
// the batch in a fixed order (deterministic).
//
// CUDA contract (declared below, not registered until implemented; blueprint: the Triton kernels in
// transxnet_ops/triton/_idconv_weights_kernels.py): forward 1 launch, one block per (channel block, tap
// block, batch block), softmax over G in fp32 registers; backward 1 launch, one block per (channel, tap block)
// looping over the batch, so the parameter gradients are summed in order without partial buffers.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <tuple>

namespace transxnet_ops {

// Inputs checked by check_idconv_weights_inputs (reduce/reduce_checks.h) and made contiguous.
std::tuple<at::Tensor, at::Tensor> idconv_weights_forward_cpu(const at::Tensor& logits,
                                                              const std::optional<at::Tensor>& bias_logits,
                                                              const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> idconv_weights_backward_cpu(
    const at::Tensor& grad_weight_out, const at::Tensor& grad_bias_out, const at::Tensor& logits,
    const std::optional<at::Tensor>& bias_logits, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
#ifdef TRANSXNET_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> idconv_weights_forward_cuda(const at::Tensor& logits,
                                                               const std::optional<at::Tensor>& bias_logits,
                                                               const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> idconv_weights_backward_cuda(
    const at::Tensor& grad_weight_out, const at::Tensor& grad_bias_out, const at::Tensor& logits,
    const std::optional<at::Tensor>& bias_logits, const at::Tensor& weight, const std::optional<at::Tensor>& bias);
#endif

}  // namespace transxnet_ops
