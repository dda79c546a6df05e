// OSRA attention CUDA entry points: allocation and workspaces, device guard, torch's current stream.
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
  const auto f32 = q.options().dtype(at::kFloat);
  auto delta = at::empty({s.B * s.H * s.N}, f32);
  auto partial = at::empty({2 * s.B * s.H * osra_cuda_query_chunks(s) * s.M * s.D}, f32);
  check_launch(osra_cuda_backward(cuda_dtype(q, "osra_attention_backward"), grad_out.data_ptr(), q.data_ptr(),
                                  k.data_ptr(), v.data_ptr(), bias ? bias->data_ptr() : nullptr, out.data_ptr(),
                                  lse.data_ptr<float>(), delta.data_ptr<float>(), partial.data_ptr<float>(),
                                  grad_q.data_ptr(), grad_k.data_ptr(), grad_v.data_ptr(),
                                  want_grad_bias ? grad_bias.data_ptr() : nullptr, s, static_cast<float>(scale),
                                  at::cuda::getCurrentCUDAStream()),
               "osra_attention_backward");
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace transxnet_ops
