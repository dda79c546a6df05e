// Op implementations shared by every device registration: input checks, contiguous inputs, then the device entry
// point (`<op>_forward_<dev>` / `<op>_backward_<dev>`); the TRANSXNET_REGISTER_* macros bind them to a
// TORCH_LIBRARY_IMPL block. Used by ops.cpp (CPU, CUDA) and by the CPU test emulator of the CUDA kernels
// (tests/cuda_emu), which registers the CUDA entry points for CPU tensors in its own namespace.
#pragma once
#include <torch/library.h>

#include "activation_layout.h"
#include "checks.h"
#include "dwconv/dwconv.h"
#include "idconv/idconv.h"
#include "osra/attn.h"
#include "reduce/idconv_weights.h"
#include "reduce/reduce.h"
#include "reduce/reduce_checks.h"

namespace transxnet_ops {

// Depthwise activations (idconv, dwconv2d). Kernels that read channels-innermost views in place (CUDA: kNhwc) get
// a channels-last x as it is, grad_y in x's layout, and return outputs in that layout; the others (CPU) get
// NCHW-contiguous tensors and their outputs are converted to x's layout (activation_layout.h) afterwards.
constexpr bool kDepthwiseNhwc_cpu = false;
constexpr bool kDepthwiseNhwc_cuda = true;
constexpr bool kDepthwiseNhwc_emu = true;  // the CPU test emulator of the CUDA kernels (tests/cuda_emu)

template <bool kNhwc>
at::Tensor depthwise_input(const at::Tensor& t, const at::Tensor& x) {
  if (kNhwc && channels_last_activation(x))
    return t.stride(1) == 1 ? t : t.contiguous(at::MemoryFormat::ChannelsLast);
  return t.contiguous();
}

inline at::Tensor in_layout_of(const at::Tensor& out, const at::Tensor& x) {
  return out.contiguous(activation_format(x));  // a no-op when the kernels wrote it so
}

template <bool kNhwc, typename Fwd>
at::Tensor idconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_idconv_inputs(x, weight, bias);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  return in_layout_of(fwd(depthwise_input<kNhwc>(x, x), weight.contiguous(), b), x);
}

template <bool kNhwc, typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  check_idconv_inputs(x, weight, std::nullopt);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "idconv_backward: grad_y must match x, got ", grad_y.sizes());
  auto [grad_x, grad_w, grad_b] =
      bwd(depthwise_input<kNhwc>(grad_y, x), depthwise_input<kNhwc>(x, x), weight.contiguous());
  return {in_layout_of(grad_x, x), grad_w, grad_b};
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

template <bool kNhwc, typename Fwd>
at::Tensor dwconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  check_dwconv_inputs(x, weight, bias, split_sizes, kernel_sizes);
  return in_layout_of(fwd(depthwise_input<kNhwc>(x, x), weight.contiguous(), contiguous_opt(bias), split_sizes,
                          kernel_sizes),
                      x);
}

template <bool kNhwc, typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x, const at::Tensor& weight,
                                                                    at::IntArrayRef split_sizes,
                                                                    at::IntArrayRef kernel_sizes, bool bias_grad) {
  check_dwconv_inputs(x, weight, std::nullopt, split_sizes, kernel_sizes);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "dwconv2d_backward: grad_y must match x, got ", grad_y.sizes());
  auto [grad_x, grad_w, grad_b] = bwd(depthwise_input<kNhwc>(grad_y, x), depthwise_input<kNhwc>(x, x),
                                      weight.contiguous(), split_sizes, kernel_sizes, bias_grad);
  return {in_layout_of(grad_x, x), grad_w, grad_b};
}

// CPU only (an inference epilogue; other devices compose it in transxnet_ops.ops).
inline at::Tensor dwconv_inference_impl(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& in_scale,
                                        const std::optional<at::Tensor>& in_shift, at::IntArrayRef split_sizes,
                                        at::IntArrayRef kernel_sizes, bool gelu) {
  check_dwconv_inputs(x, weight, bias, split_sizes, kernel_sizes);
  check_dwconv_input_map(x, in_scale, in_shift);
  return in_layout_of(dwconv2d_inference_cpu(x.contiguous(), weight.contiguous(), contiguous_opt(bias),
                                             contiguous_opt(in_scale), contiguous_opt(in_shift), split_sizes,
                                             kernel_sizes, gelu),
                      x);
}

#define TRANSXNET_REGISTER_DWCONV(m, dev)                                                                        \
  m.impl("dwconv2d", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,            \
                        at::IntArrayRef splits, at::IntArrayRef ks) {                                            \
    return dwconv_impl<kDepthwiseNhwc_##dev>(dwconv2d_forward_##dev, x, w, b, splits, ks);                       \
  });                                                                                                            \
  m.impl("dwconv2d_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,                 \
                                 at::IntArrayRef splits, at::IntArrayRef ks, bool bias_grad) {                   \
    return dwconv_backward_impl<kDepthwiseNhwc_##dev>(dwconv2d_backward_##dev, gy, x, w, splits, ks, bias_grad); \
  });

#define TRANSXNET_REGISTER_IDCONV(m, dev)                                                             \
  m.impl("idconv", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) { \
    return idconv_impl<kDepthwiseNhwc_##dev>(idconv_forward_##dev, x, w, b);                          \
  });                                                                                                 \
  m.impl("idconv_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w) {      \
    return idconv_backward_impl<kDepthwiseNhwc_##dev>(idconv_backward_##dev, gy, x, w);               \
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

// OSRA reduce path (reduce/reduce.h): the schema's flat argument list gathered into ReduceParams.
template <typename Fwd>
ReduceForward osra_reduce_impl(Fwd fwd, const at::Tensor& x, ReduceParams p, bool training, bool save_u) {
  check_osra_reduce_inputs(x, p);
  TORCH_CHECK(p.bn1_running_mean.defined() && p.bn2_running_var.defined(),
              "osra_reduce: the running statistics are required");
  return fwd(x.contiguous(), p, training, save_u);
}

template <typename Bwd>
ReduceBackward osra_reduce_backward_impl(Bwd bwd, const at::Tensor& grad_out, const at::Tensor& x,
                                         const at::Tensor& u, const at::Tensor& stats, ReduceParams p,
                                         bool training) {
  check_osra_reduce_inputs(x, p);
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && u.scalar_type() == x.scalar_type(),
              "osra_reduce_backward: grad_out and u must have x's dtype");
  return bwd(grad_out.contiguous(), x.contiguous(), u.contiguous(), stats, p, training);
}

template <typename Fwd>
std::tuple<at::Tensor, at::Tensor> idconv_weights_impl(Fwd fwd, const at::Tensor& logits,
                                                       const std::optional<at::Tensor>& bias_logits,
                                                       const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias) {
  check_idconv_weights_inputs(logits, bias_logits, weight, bias);
  return fwd(logits.contiguous(), contiguous_opt(bias_logits), weight.contiguous(), contiguous_opt(bias));
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> idconv_weights_backward_impl(
    Bwd bwd, const at::Tensor& grad_weight_out, const at::Tensor& grad_bias_out, const at::Tensor& logits,
    const std::optional<at::Tensor>& bias_logits, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_idconv_weights_inputs(logits, bias_logits, weight, bias);
  return bwd(grad_weight_out.contiguous(), grad_bias_out.contiguous(), logits.contiguous(),
             contiguous_opt(bias_logits), weight.contiguous(), contiguous_opt(bias));
}

#define TRANSXNET_REGISTER_REDUCE(m, dev)                                                                   \
  m.impl("osra_reduce", [](const at::Tensor& x, const at::Tensor& w1, const at::Tensor& g1,                \
                           const at::Tensor& b1, const at::Tensor& rm1, const at::Tensor& rv1,             \
                           const at::Tensor& w2, const at::Tensor& g2, const at::Tensor& b2,               \
                           const at::Tensor& rm2, const at::Tensor& rv2, const at::Tensor& w3,             \
                           const at::Tensor& b3, int64_t sr, double eps1, double eps2, bool training,      \
                           bool save_u) {                                                                   \
    return osra_reduce_impl(osra_reduce_forward_##dev, x,                                                  \
                            ReduceParams{w1, g1, b1, rm1, rv1, w2, g2, b2, rm2, rv2, w3, b3, sr, eps1, eps2}, \
                            training, save_u);                                                              \
  });                                                                                                       \
  m.impl("osra_reduce_backward",                                                                            \
         [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& u, const at::Tensor& stats,       \
            const at::Tensor& w1, const at::Tensor& g1, const at::Tensor& b1, const at::Tensor& w2,        \
            const at::Tensor& g2, const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,        \
            int64_t sr, double eps1, double eps2, bool training) {                                          \
           return osra_reduce_backward_impl(                                                                \
               osra_reduce_backward_##dev, gy, x, u, stats,                                                 \
               ReduceParams{w1, g1, b1, {}, {}, w2, g2, b2, {}, {}, w3, b3, sr, eps1, eps2}, training);     \
         });                                                                                                \
  m.impl("idconv_weights", [](const at::Tensor& l, const std::optional<at::Tensor>& bl, const at::Tensor& w, \
                              const std::optional<at::Tensor>& b) {                                         \
    return idconv_weights_impl(idconv_weights_forward_##dev, l, bl, w, b);                                 \
  });                                                                                                       \
  m.impl("idconv_weights_backward",                                                                         \
         [](const at::Tensor& gw, const at::Tensor& gb, const at::Tensor& l,                                \
            const std::optional<at::Tensor>& bl, const at::Tensor& w, const std::optional<at::Tensor>& b) { \
           return idconv_weights_backward_impl(idconv_weights_backward_##dev, gw, gb, l, bl, w, b);         \
         });

#define TRANSXNET_REGISTER_IMPLS(m, dev) TRANSXNET_REGISTER_IDCONV(m, dev) TRANSXNET_REGISTER_OSRA(m, dev)

}  // namespace transxnet_ops
