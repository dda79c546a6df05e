// IDConv: per-sample depthwise convolution, stride 1, zero padding K//2.
//   y[b,c,h,w] = bias[b,c] + sum_{i,j} weight[b,c,i,j] * x[b,c,h+i-K/2,w+j-K/2]
// The device entry points receive tensors already checked by check_idconv_inputs (ops.cpp) and made
// contiguous NCHW (CUDA: channels-last inputs stay as they are, op_impls.h); outputs are in x's layout
// (activation_layout.h) and the input dtype.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <tuple>

namespace transxnet_ops {

at::Tensor idconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias);
// Returns (grad_x (B,C,H,W), grad_weight (B,C,K,K), grad_bias (B,C)); grad_bias is always computed.
std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cpu(const at::Tensor& grad_y,
                                                                   const at::Tensor& x,
                                                                   const at::Tensor& weight);
#ifdef TRANSXNET_WITH_CUDA
at::Tensor idconv_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cuda(const at::Tensor& grad_y,
                                                                    const at::Tensor& x,
                                                                    const at::Tensor& weight);
#endif

}  // namespace transxnet_ops
