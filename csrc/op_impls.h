// Op implementations shared by every device registration: input checks, contiguous inputs, then the device entry
// point (`<op>_forward_<dev>` / `<op>_backward_<dev>`); the TRANSXNET_REGISTER_* macros bind them to a
// TORCH_LIBRARY_IMPL block. Used by ops.cpp (CPU, CUDA) and by the CPU test emulator of the CUDA kernels
// (tests/cuda_emu), which registers the CUDA entry points for CPU tensors in its own namespace.
#pragma once
#include <torch/library.h>

#include "checks.h"
#include "dwconv/dwconv.h"
#include "idconv/idconv.h"
#include "osra/attn.h"

namespace transxnet_ops {

template <typename Fwd>
at::Tensor idconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_idconv_inputs(x, weight, bias);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  return fwd(x.contiguous(), weight.contiguous(), b);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  check_idconv_inputs(x, weight, std::nullopt);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "idconv_backward: grad_y must match x, got ", grad_y.sizes());
  return bwd(grad_y.contiguous(), x.contiguous(), weight.contiguous());
}

inline std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

template <typename Fwd>
std::tuple<at::Tensor, at::Tensor> attn_impl(Fwd fwd, const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const std::optional<at::Tensor>& bias,
                                             double scale) {
  check_attn_inputs(q, k, v, bias);
  return fwd(q.contiguous(), k.contiguous(), v.contiguous(), contiguous_opt(bias), scale);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_backward_impl(
    Bwd bwd, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale,
    bool bias_requires_grad) {
  check_attn_inputs(q, k, v, bias);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "osra_attention_backward: grad_out and out must be shaped like q");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == q.size(2) &&
                  lse.scalar_type() == (q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "osra_attention_backward: lse must be (B, H, N) in float32 (float64 for float64 inputs), got ",
              lse.sizes(), " ", lse.scalar_type());
  return bwd(grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), contiguous_opt(bias),
             out.contiguous(), lse.contiguous(), scale, bias_requires_grad);
}

template <typename Fwd>
at::Tensor dwconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  check_dwconv_inputs(x, weight, bias, split_sizes, kernel_sizes);
  return fwd(x.contiguous(), weight.contiguous(), contiguous_opt(bias), split_sizes, kernel_sizes);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x, const at::Tensor& weight,
                                                                    at::IntArrayRef split_sizes,
                                                                    at::IntArrayRef kernel_sizes, bool bias_grad) {
  check_dwconv_inputs(x, weight, std::nullopt, split_sizes, kernel_sizes);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "dwconv2d_backward: grad_y must match x, got ", grad_y.sizes());
  return bwd(grad_y.contiguous(), x.contiguous(), weight.contiguous(), split_sizes, kernel_sizes, bias_grad);
}

#define TRANSXNET_REGISTER_DWCONV(m, dev)                                                              \
  m.impl("dwconv2d", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,  \
                        at::IntArrayRef splits, at::IntArrayRef ks) {                                  \
    return dwconv_impl(dwconv2d_forward_##dev, x, w, b, splits, ks);                                   \
  });                                                                                                  \
  m.impl("dwconv2d_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,       \
                                 at::IntArrayRef splits, at::IntArrayRef ks, bool bias_grad) {         \
    return dwconv_backward_impl(dwconv2d_backward_##dev, gy, x, w, splits, ks, bias_grad);             \
  });

#define TRANSXNET_REGISTER_IDCONV(m, dev)                                                           \
  m.impl("idconv", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) { \
    return idconv_impl(idconv_forward_##dev, x, w, b);                                              \
  });                                                                                               \
  m.impl("idconv_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w) {    \
    return idconv_backward_impl(idconv_backward_##dev, gy, x, w);                                   \
  });

#define TRANSXNET_REGISTER_OSRA(m, dev)                                                             \
  m.impl("osra_attention", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,        \
                              const std::optional<at::Tensor>& b, double s) {                       \
    return attn_impl(osra_attention_forward_##dev, q, k, v, b, s);                                  \
  });                                                                                               \
  m.impl("osra_attention_backward",                                                                 \
         [](const at::Tensor& go, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,    \
            const std::optional<at::Tensor>& b, const at::Tensor& o, const at::Tensor& lse, double s, \
            bool brg) {                                                                             \
           return attn_backward_impl(osra_attention_backward_##dev, go, q, k, v, b, o, lse, s, brg); \
         });

#define TRANSXNET_REGISTER_IMPLS(m, dev) TRANSXNET_REGISTER_IDCONV(m, dev) TRANSXNET_REGISTER_OSRA(m, dev)

}  // namespace transxnet_ops
