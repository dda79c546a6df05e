// Shape/dtype/device checks shared by the CPU and CUDA entry points. The Python front reports friendlier
// errors first; these keep a direct torch.ops call from ever reading out of bounds.
#pragma once
#include <ATen/ATen.h>

namespace transxnet_ops {

inline void check_idconv_inputs(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 4, "idconv: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, "idconv: weight must be (B, C, K, K), got ", weight.sizes());
  TORCH_CHECK(weight.size(0) == x.size(0) && weight.size(1) == x.size(1),
              "idconv: weight must be (B, C, K, K) = (", x.size(0), ", ", x.size(1), ", K, K), got ",
              weight.sizes());
  TORCH_CHECK(weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "idconv: weight kernel must be square with odd K, got ", weight.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "idconv: x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(),
              "idconv: weight must match x's dtype and device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == x.size(0) && bias->size(1) == x.size(1),
                "idconv: bias must be (B, C) = (", x.size(0), ", ", x.size(1), "), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "idconv: bias must match x's dtype and device");
  }
}

inline void check_attn_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "osra_attention: q, k, v must be 4-D (B, H, N|M, D)");
  TORCH_CHECK(k.sizes() == v.sizes(), "osra_attention: k and v must have the same shape, got ",
              k.sizes(), " and ", v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "osra_attention: q ", q.sizes(), " and k ", k.sizes(), " disagree on B, H or D");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "osra_attention: q must be floating point");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "osra_attention: q, k, v must share a dtype");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              "osra_attention: q, k, v must be on one device");
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.dim() == 4 && (b.size(0) == 1 || b.size(0) == q.size(0)) &&
                    (b.size(1) == 1 || b.size(1) == q.size(1)) && b.size(2) == q.size(2) &&
                    b.size(3) == k.size(2),
                "osra_attention: bias must be (1|B, 1|H, N, M), got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == q.scalar_type() && b.device() == q.device(),
                "osra_attention: bias must match q's dtype and device");
  }
}


// Segments of a (multi-scale) static depthwise conv: split_sizes sum to C, odd kernel sizes, packed weight length.
inline void check_dwconv_inputs(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  TORCH_CHECK(x.dim() == 4, "dwconv2d: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "dwconv2d: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(!split_sizes.empty() && split_sizes.size() == kernel_sizes.size(),
              "dwconv2d: split_sizes and kernel_sizes must be non-empty and of one length, got ", split_sizes,
              " and ", kernel_sizes);
  int64_t channels = 0, taps = 0;
  for (size_t s = 0; s < split_sizes.size(); ++s) {
    TORCH_CHECK(split_sizes[s] >= 0, "dwconv2d: split_sizes must be >= 0, got ", split_sizes);
    TORCH_CHECK(kernel_sizes[s] >= 1 && kernel_sizes[s] % 2 == 1, "dwconv2d: kernel sizes must be odd, got ",
                kernel_sizes);
    channels += split_sizes[s];
    taps += split_sizes[s] * kernel_sizes[s] * kernel_sizes[s];
  }
  TORCH_CHECK(channels == x.size(1), "dwconv2d: split_sizes must sum to C = ", x.size(1), ", got ", split_sizes);
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == taps, "dwconv2d: weight must be 1-D with ", taps,
              " packed taps, got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.device() == x.device(),
              "dwconv2d: weight must match x's dtype and device");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "dwconv2d: bias must be (C,) = (", x.size(1),
                "), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "dwconv2d: bias must match x's dtype and device");
  }
}

// dwconv2d_inference's per-channel input map: both or neither, each (C,) in x's dtype and device.
inline void check_dwconv_input_map(const at::Tensor& x, const std::optional<at::Tensor>& in_scale,
                                   const std::optional<at::Tensor>& in_shift) {
  TORCH_CHECK(in_scale.has_value() == in_shift.has_value(),
              "dwconv2d_inference: in_scale and in_shift must be given together");
  for (const auto* t : {&in_scale, &in_shift}) {
    if (!t->has_value()) continue;
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == x.size(1), "dwconv2d_inference: in_scale and in_shift must be (C,) = (",
                x.size(1), "), got ", (*t)->sizes());
    TORCH_CHECK((*t)->scalar_type() == x.scalar_type() && (*t)->device() == x.device(),
                "dwconv2d_inference: in_scale and in_shift must match x's dtype and device");
  }
}

}  // namespace transxnet_ops
