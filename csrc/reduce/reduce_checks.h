// Shape/dtype/device checks of the reduce-family ops (osra_reduce, idconv_weights) shared by every device entry
// point. The Python front reports friendlier errors first; these keep a direct torch.ops call in bounds.
#pragma once
#include <ATen/ATen.h>

#include "reduce/reduce.h"

namespace transxnet_ops {

inline void check_param(const at::Tensor& t, const at::Tensor& x, at::IntArrayRef shape, const char* op,
                        const char* name) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) && t.device() == x.device(), op, ": ", name,
              " must be a floating-point tensor on x's device");
}

inline void check_osra_reduce_inputs(const at::Tensor& x, const ReduceParams& p) {
  TORCH_CHECK(x.dim() == 4, "osra_reduce: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "osra_reduce: x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(p.sr_ratio >= 2, "osra_reduce: sr_ratio must be >= 2, got ", p.sr_ratio);
  TORCH_CHECK(p.eps1 > 0 && p.eps2 > 0, "osra_reduce: eps must be > 0");
  const int64_t C = x.size(1), k = p.sr_ratio + 3;
  check_param(p.conv1_weight, x, {C, 1, k, k}, "osra_reduce", "conv1_weight");
  check_param(p.conv2_weight, x, {C, 1, 1, 1}, "osra_reduce", "conv2_weight");
  check_param(p.local_weight, x, {C, 1, 3, 3}, "osra_reduce", "local_weight");
  for (const auto* t : {&p.bn1_weight, &p.bn1_bias, &p.bn2_weight, &p.bn2_bias})
    check_param(*t, x, {C}, "osra_reduce", "BatchNorm weight/bias");
  for (const auto* t : {&p.bn1_running_mean, &p.bn1_running_var, &p.bn2_running_mean, &p.bn2_running_var,
                        &p.local_bias})
    if (t->defined()) check_param(*t, x, {C}, "osra_reduce", "running statistics / local_bias");
}

inline void check_idconv_weights_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& bias_logits,
                                        const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == weight.size(3),
              "idconv_weights: weight must be (G, C, K, K), got ", weight.sizes());
  const int64_t G = weight.size(0), C = weight.size(1), K = weight.size(2);
  TORCH_CHECK(logits.dim() == 4 && logits.size(1) == G * C &&
                  ((logits.size(2) == K && logits.size(3) == K) ||
                   (logits.size(2) == K + 1 && logits.size(3) == K + 1)),
              "idconv_weights: logits must be (B, G*C, K, K) or packed (B, G*C, K+1, K+1) with G*C = ", G * C,
              ", K = ", K, ", got ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "idconv_weights: logits must be floating point");
  check_param(weight, logits, weight.sizes(), "idconv_weights", "weight");
  const bool packed = logits.size(2) == K + 1;
  if (bias.has_value()) {
    check_param(*bias, logits, {G, C}, "idconv_weights", "bias");
    TORCH_CHECK(bias_logits.has_value() || packed,
                "idconv_weights: a bias needs bias_logits (B, G*C) or packed logits (B, G*C, K+1, K+1)");
  }
  if (bias_logits.has_value()) {
    TORCH_CHECK(bias_logits->dim() == 2 && bias_logits->size(0) == logits.size(0) && bias_logits->size(1) == G * C,
                "idconv_weights: bias_logits must be (B, G*C) = (", logits.size(0), ", ", G * C, "), got ",
                bias_logits->sizes());
    TORCH_CHECK(bias_logits->scalar_type() == logits.scalar_type() && bias_logits->device() == logits.device(),
                "idconv_weights: bias_logits must match logits' dtype and device");
    TORCH_CHECK(bias.has_value(), "idconv_weights: bias_logits given without a bias");
  }
}

}  // namespace transxnet_ops
