// IDConv weight generation CUDA entry points (contract in reduce/idconv_weights.h): checks, allocation, device
// guard, torch's current stream; kernels in idconv_weights_cuda.cu.
#include <limits>

#include "reduce/idconv_weights.h"
#include "reduce/idconv_weights_launch.h"
#include "reduce/param_binding.h"

namespace transxnet_ops {

namespace {

IdconvWeightsShape shape_of(const at::Tensor& logits, const std::optional<at::Tensor>& bias_logits,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias, const char* op) {
  const IdconvWeightsShape s{logits.size(0), weight.size(0), weight.size(1), weight.size(2), logits.size(2),
                             bias.has_value(), bias_logits.has_value()};
  TORCH_CHECK(s.B * s.C * (s.K + 1) * (s.K + 1) <= std::numeric_limits<int32_t>::max(), op, ": logits ",
              logits.sizes(), " need more threads than one launch takes");
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> idconv_weights_forward_cuda(const at::Tensor& logits,
                                                               const std::optional<at::Tensor>& bias_logits,
                                                               const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& bias) {
  const IdconvWeightsShape s = shape_of(logits, bias_logits, weight, bias, "idconv_weights");
  const c10::cuda::CUDAGuard guard(logits.device());
  const DType dtype = cuda_dtype(logits, "idconv_weights");
  const at::Tensor w = kernel_param(weight);
  const at::Tensor b = bias.has_value() ? kernel_param(*bias) : at::Tensor();
  auto weight_out = at::empty({s.B, s.C, s.K, s.K}, logits.options());
  auto bias_out = bias.has_value() ? at::empty({s.B, s.C}, logits.options()) : at::empty({0}, logits.options());
  check_launch(idconv_weights_cuda_forward(dtype, s, logits.data_ptr(),
                                           bias_logits.has_value() ? bias_logits->data_ptr() : nullptr,
                                           param_ref(w, "idconv_weights"), param_ref(b, "idconv_weights"),
                                           weight_out.data_ptr(), bias.has_value() ? bias_out.data_ptr() : nullptr,
                                           at::cuda::getCurrentCUDAStream()),
               "idconv_weights");
  return {weight_out, bias_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> idconv_weights_backward_cuda(
    const at::Tensor& grad_weight_out, const at::Tensor& grad_bias_out, const at::Tensor& logits,
    const std::optional<at::Tensor>& bias_logits, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const IdconvWeightsShape s = shape_of(logits, bias_logits, weight, bias, "idconv_weights_backward");
  TORCH_CHECK(grad_weight_out.sizes() == at::IntArrayRef({s.B, s.C, s.K, s.K}) &&
                  grad_weight_out.scalar_type() == logits.scalar_type() && grad_weight_out.device() == logits.device(),
              "idconv_weights_backward: grad_weight_out must be (B, C, K, K) = (", s.B, ", ", s.C, ", ", s.K, ", ",
              s.K, ") in logits' dtype and device, got ", grad_weight_out.sizes(), " ", grad_weight_out.scalar_type());
  TORCH_CHECK(!bias.has_value() || (grad_bias_out.sizes() == at::IntArrayRef({s.B, s.C}) &&
                                    grad_bias_out.scalar_type() == logits.scalar_type() &&
                                    grad_bias_out.device() == logits.device()),
              "idconv_weights_backward: grad_bias_out must be (B, C) = (", s.B, ", ", s.C,
              ") in logits' dtype and device, got ", grad_bias_out.sizes(), " ", grad_bias_out.scalar_type());
  const c10::cuda::CUDAGuard guard(logits.device());
  const DType dtype = cuda_dtype(logits, "idconv_weights_backward");
  const at::Tensor w = kernel_param(weight);
  const at::Tensor b = bias.has_value() ? kernel_param(*bias) : at::Tensor();
  auto grad_logits = at::empty_like(logits, at::MemoryFormat::Contiguous);  // every entry written (0 if unused)
  auto grad_bias_logits = bias_logits.has_value() ? at::empty_like(*bias_logits, at::MemoryFormat::Contiguous)
                                                  : at::empty({0}, logits.options());
  auto grad_w = grad_buffer(weight);
  auto grad_b = bias.has_value() ? grad_buffer(*bias) : at::empty({0}, weight.options());
  check_launch(idconv_weights_cuda_backward(
                   dtype, s, grad_weight_out.data_ptr(), bias.has_value() ? grad_bias_out.data_ptr() : nullptr,
                   logits.data_ptr(), bias_logits.has_value() ? bias_logits->data_ptr() : nullptr,
                   param_ref(w, "idconv_weights_backward"), param_ref(b, "idconv_weights_backward"),
                   grad_logits.data_ptr(), bias_logits.has_value() ? grad_bias_logits.data_ptr() : nullptr,
                   grad_ref(grad_w, "idconv_weights_backward"),
                   bias.has_value() ? grad_ref(grad_b, "idconv_weights_backward") : GradRef{nullptr, DType::Float32},
                   at::cuda::getCurrentCUDAStream()),
               "idconv_weights_backward");
  return {grad_logits, grad_bias_logits, as_param_dtype(grad_w, weight),
          bias.has_value() ? as_param_dtype(grad_b, *bias) : grad_b};
}

}  // namespace transxnet_ops
