// OSRA attention CUDA entry points: allocation and workspaces, device guard, torch's current stream.
#include <limits>

#include "cuda_binding.h"
#include "osra/attn.h"
#include "osra/attn_launch.h"

namespace transxnet_ops {

namespace {
AttnShape shape_of(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(q.size(3) <= kMaxCudaHeadDim, "osra_attention: the CUDA kernels support head_dim <= ",
              kMaxCudaHeadDim, ", got ", q.size(3), "; use backend='triton' or 'reference'");
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), bias ? bias->size(0) : 1, bias ? bias->size(1) : 1};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v,
                                                               const std::optional<at::Tensor>& bias, double scale) {
  const AttnShape s = shape_of(q, k, bias);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto lse = at::empty({s.B, s.H, s.N}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 || s.M == 0) {  // as on CPU: no keys, an undefined softmax
    out.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  check_launch(osra_cuda_forward(cuda_dtype(q, "osra_attention"), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                 bias ? bias->data_ptr() : nullptr, out.data_ptr(), lse.data_ptr<float>(), s,
                                 static_cast<float>(scale), at::cuda::getCurrentCUDAStream()),
               "osra_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> osra_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale,
    bool bias_requires_grad) {
  const AttnShape s = shape_of(q, k, bias);
  const c10::cuda::CUDAGuard guard(q.device());
  const bool want_grad_bias = bias.has_value() && bias_requires_grad;
  auto grad_q = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto grad_k = at::empty_like(k, at::MemoryFormat::Contiguous);
  auto grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
  auto grad_bias = want_grad_bias ? at::empty_like(*bias, at::MemoryFormat::Contiguous) : at::empty({0}, q.options());
  if (q.numel() == 0 || s.M == 0) {  // nothing flows back
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    if (want_grad_bias) grad_bias.zero_();
    return {grad_q, grad_k, grad_v, grad_bias};
  }
  const DType dtype = cuda_dtype(q, "osra_attention_backward");
  const int64_t workspace_floats = osra_cuda_backward_workspace(dtype, s, want_grad_bias);
  auto workspace = at::empty({workspace_floats}, q.options().dtype(at::kFloat));
  check_launch(osra_cuda_backward(dtype, grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                  bias ? bias->data_ptr() : nullptr, out.data_ptr(), lse.data_ptr<float>(),
                                  workspace_floats > 0 ? workspace.data_ptr<float>() : nullptr, grad_q.data_ptr(),
                                  grad_k.data_ptr(), grad_v.data_ptr(),
                                  want_grad_bias ? grad_bias.data_ptr() : nullptr, s, static_cast<float>(scale),
                                  at::cuda::getCurrentCUDAStream()),
               "osra_attention_backward");
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace transxnet_ops
