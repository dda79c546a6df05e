// Static depthwise convolution (weights shared by the batch), stride 1, zero padding k//2, with the channels
// split into segments of their own odd kernel size (MS-FFN's 1/3/5/7 convs run as one op; a plain depthwise
// conv is one segment):
//   segment s covers channels [c_s, c_s + split_sizes[s]) with kernel size k_s = kernel_sizes[s];
//   weight is 1-D, the concatenation over segments of their (split_sizes[s], 1, k_s, k_s) weights flattened;
//   y[b,c,h,w] = bias[c] + sum_{i,j < k_s} w_c[i,j] * x[b,c,h+i-k_s/2,w+j-k_s/2].
// The device entry points receive tensors checked by check_dwconv_inputs (checks.h) and made contiguous NCHW
// (CUDA: channels-last inputs stay as they are, op_impls.h); outputs are in x's layout (activation_layout.h) and the
// input dtype. grad_weight is reduced over the batch in a fixed order
// (fp32 partials, no atomics); grad_bias is (C,) when bias_requires_grad, else an empty (0,) tensor.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <tuple>

namespace transxnet_ops {

at::Tensor dwconv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes);
// Inference only: gelu?(dwconv2d(x * in_scale + in_shift)) in one pass (in_scale, in_shift: (C,) or both absent;
// the zero padding applies after the affine map; gelu: the exact erf form).
at::Tensor dwconv2d_inference_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& in_shift,
                                  at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes, bool gelu);
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                     const at::Tensor& weight,
                                                                     at::IntArrayRef split_sizes,
                                                                     at::IntArrayRef kernel_sizes,
                                                                     bool bias_requires_grad);
#ifdef TRANSXNET_WITH_CUDA
at::Tensor dwconv2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes);
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      at::IntArrayRef split_sizes,
                                                                      at::IntArrayRef kernel_sizes,
                                                                      bool bias_requires_grad);
#endif

}  // namespace transxnet_ops
