// Torch side of the reduce-family CUDA bindings: parameters handed to the kernels in their own dtype
// (float32/float16/bfloat16; anything else as a float32 copy), and parameter gradients allocated in the
// kernels' dtype and returned in the parameter's.
#pragma once
#include "cuda_binding.h"
#include "reduce/param_launch.h"

namespace transxnet_ops {

inline bool is_kernel_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// A contiguous tensor the kernels can read (undefined stays undefined).
inline at::Tensor kernel_param(const at::Tensor& t) {
  if (!t.defined()) return t;
  return is_kernel_dtype(t.scalar_type()) ? t.contiguous() : t.to(at::kFloat).contiguous();
}

inline ParamRef param_ref(const at::Tensor& t, const char* op) {
  if (!t.defined()) return {nullptr, DType::Float32};
  return {t.data_ptr(), cuda_dtype(t, op)};
}

// A gradient buffer shaped like `param` (contiguous) in a dtype the kernels write.
inline at::Tensor grad_buffer(const at::Tensor& param) {
  const auto dtype = is_kernel_dtype(param.scalar_type()) ? param.scalar_type() : at::kFloat;
  return at::empty(param.sizes(), param.options().dtype(dtype));
}

inline GradRef grad_ref(at::Tensor& t, const char* op) { return {t.data_ptr(), cuda_dtype(t, op)}; }

// The gradient in the parameter's dtype.
inline at::Tensor as_param_dtype(const at::Tensor& grad, const at::Tensor& param) {
  return grad.scalar_type() == param.scalar_type() ? grad : grad.to(param.scalar_type());
}

}  // namespace transxnet_ops
