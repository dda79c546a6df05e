// IDConv weight generation on CPU (contract in reduce/idconv_weights.h): a softmax over the G groups mixes the
// G learnable kernels per (sample, channel, tap). The backward owns one channel per task and loops over the
// batch in order, so the parameter gradients are deterministic for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "reduce/idconv_weights.h"

namespace transxnet_ops {
namespace {

// Where the logits of one (sample, channel) slot live: G values `group_stride` apart.
struct Layout {
  int64_t B, G, C, K, KL;  // KL: logits' spatial size, K (separate bias logits) or K + 1 (packed)
  bool packed;
  int64_t taps() const { return K * K; }
  // offset of the kernel logit (g = 0) of sample b, channel c, tap t in the (B, G*C, KL, KL) logits
  int64_t kernel_logit(int64_t b, int64_t c, int64_t t) const {
    return (b * G * C + c) * KL * KL + (t / K) * KL + t % K;
  }
  int64_t mean_logit(int64_t b, int64_t c) const { return (b * G * C + c) * KL * KL + K * KL + K; }  // packed [K, K]
  int64_t group_stride() const { return C * KL * KL; }
};

Layout layout_of(const at::Tensor& logits, const at::Tensor& weight) {
  const int64_t K = weight.size(2), KL = logits.size(2);
  return {logits.size(0), weight.size(0), weight.size(1), K, KL, KL == K + 1};
}

// softmax over g of logit[g * stride], written to p[g]; returns sum_g p[g] * w[g * w_stride]
template <typename L, typename Acc>
Acc softmax_mix(const L* logit, int64_t stride, const Acc* w, int64_t w_stride, int64_t G, Acc* p) {
  Acc top = static_cast<Acc>(logit[0]);
  for (int64_t g = 1; g < G; ++g) top = std::max(top, static_cast<Acc>(logit[g * stride]));
  Acc total = 0;
  for (int64_t g = 0; g < G; ++g) total += (p[g] = std::exp(static_cast<Acc>(logit[g * stride]) - top));
  Acc mixed = 0;
  for (int64_t g = 0; g < G; ++g) {
    p[g] /= total;
    mixed += p[g] * w[g * w_stride];
  }
  return mixed;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> idconv_weights_forward_cpu(const at::Tensor& logits,
                                                              const std::optional<at::Tensor>& bias_logits,
                                                              const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias) {
  const Layout l = layout_of(logits, weight);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto w = weight.to(acc_type).contiguous();
  const auto bw = bias.has_value() ? bias->to(acc_type).contiguous() : at::Tensor();
  auto weight_out = at::empty({l.B, l.C, l.K, l.K}, logits.options());
  auto bias_out = bias.has_value() ? at::empty({l.B, l.C}, logits.options()) : at::empty({0}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "idconv_weights_forward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const scalar_t* blp = bias_logits.has_value() ? bias_logits->data_ptr<scalar_t>() : nullptr;
    const Acc* wp = w.data_ptr<Acc>();
    scalar_t* op = weight_out.data_ptr<scalar_t>();
    at::parallel_for(0, l.B * l.C, 1, [&](int64_t begin, int64_t end) {
      std::vector<Acc> p(l.G);
      for (int64_t bc = begin; bc < end; ++bc) {
        const int64_t b = bc / l.C, c = bc % l.C;
        for (int64_t t = 0; t < l.taps(); ++t)
          op[bc * l.taps() + t] = static_cast<scalar_t>(softmax_mix(
              lp + l.kernel_logit(b, c, t), l.group_stride(), wp + c * l.taps() + t, l.C * l.taps(), l.G, p.data()));
        if (bw.defined()) {
          const scalar_t* bl = blp ? blp + b * l.G * l.C + c : lp + l.mean_logit(b, c);
          const int64_t stride = blp ? l.C : l.group_stride();
          bias_out.data_ptr<scalar_t>()[bc] =
              static_cast<scalar_t>(softmax_mix(bl, stride, bw.data_ptr<Acc>() + c, l.C, l.G, p.data()));
        }
      }
    });
  });
  return {weight_out, bias_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> idconv_weights_backward_cpu(
    const at::Tensor& grad_weight_out, const at::Tensor& grad_bias_out, const at::Tensor& logits,
    const std::optional<at::Tensor>& bias_logits, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const Layout l = layout_of(logits, weight);
  TORCH_CHECK(grad_weight_out.sizes() == at::IntArrayRef({l.B, l.C, l.K, l.K}) &&
                  grad_weight_out.scalar_type() == logits.scalar_type(),
              "idconv_weights_backward: grad_weight_out must be (B, C, K, K) in logits' dtype, got ",
              grad_weight_out.sizes());
  TORCH_CHECK(!bias.has_value() || (grad_bias_out.sizes() == at::IntArrayRef({l.B, l.C}) &&
                                    grad_bias_out.scalar_type() == logits.scalar_type()),
              "idconv_weights_backward: grad_bias_out must be (B, C) in logits' dtype, got ", grad_bias_out.sizes());
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto w = weight.to(acc_type).contiguous();
  const auto bw = bias.has_value() ? bias->to(acc_type).contiguous() : at::Tensor();
  // the packed layout's unused row/column K slots get a zero gradient
  auto grad_logits = l.packed ? at::zeros_like(logits, at::MemoryFormat::Contiguous)
                              : at::empty_like(logits, at::MemoryFormat::Contiguous);
  auto grad_bias_logits = bias_logits.has_value() ? at::empty_like(*bias_logits, at::MemoryFormat::Contiguous)
                                                  : at::empty({0}, logits.options());
  auto grad_w = at::empty({l.G, l.C, l.K, l.K}, logits.options().dtype(acc_type));
  auto grad_b = at::empty({bias.has_value() ? l.G : 0, l.C}, logits.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "idconv_weights_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const scalar_t* blp = bias_logits.has_value() ? bias_logits->data_ptr<scalar_t>() : nullptr;
    const scalar_t* gwo = grad_weight_out.data_ptr<scalar_t>();
    scalar_t* glp = grad_logits.data_ptr<scalar_t>();
    scalar_t* gblp = blp ? grad_bias_logits.data_ptr<scalar_t>() : nullptr;
    // one (sample, channel, slot): logits at `logit` (G values `stride` apart), its output gradient d, the G
    // parameters at `param` (`param_stride` apart), their gradient sums at `grad_param` (`grad_stride` apart):
    // d logit_g = p_g * d * (w_g - mixed); d w_g += p_g * d
    auto slot = [&](const scalar_t* logit, scalar_t* grad_logit, int64_t stride, const Acc* param, int64_t param_stride,
                    Acc d, Acc* grad_param, int64_t grad_stride, Acc* p) {
      const Acc mixed = softmax_mix(logit, stride, param, param_stride, l.G, p);
      for (int64_t g = 0; g < l.G; ++g) {
        grad_logit[g * stride] = static_cast<scalar_t>(p[g] * d * (param[g * param_stride] - mixed));
        grad_param[g * grad_stride] += p[g] * d;
      }
    };
    at::parallel_for(0, l.C, 1, [&](int64_t c0, int64_t c1) {
      std::vector<Acc> p(l.G), gw(l.G * l.taps()), gb(l.G);
      for (int64_t c = c0; c < c1; ++c) {
        std::fill(gw.begin(), gw.end(), Acc(0));
        std::fill(gb.begin(), gb.end(), Acc(0));
        for (int64_t b = 0; b < l.B; ++b) {  // in batch order: deterministic parameter gradients
          for (int64_t t = 0; t < l.taps(); ++t) {
            const int64_t off = l.kernel_logit(b, c, t);
            slot(lp + off, glp + off, l.group_stride(), w.data_ptr<Acc>() + c * l.taps() + t, l.C * l.taps(),
                 static_cast<Acc>(gwo[(b * l.C + c) * l.taps() + t]), gw.data() + t, l.taps(), p.data());
          }
          if (!bw.defined()) continue;
          const Acc d = static_cast<Acc>(grad_bias_out.data_ptr<scalar_t>()[b * l.C + c]);
          if (blp) {
            const int64_t off = b * l.G * l.C + c;
            slot(blp + off, gblp + off, l.C, bw.data_ptr<Acc>() + c, l.C, d, gb.data(), 1, p.data());
          } else {
            const int64_t off = l.mean_logit(b, c);
            slot(lp + off, glp + off, l.group_stride(), bw.data_ptr<Acc>() + c, l.C, d, gb.data(), 1, p.data());
          }
        }
        for (int64_t g = 0; g < l.G; ++g) {
          std::copy_n(gw.data() + g * l.taps(), l.taps(), grad_w.data_ptr<Acc>() + (g * l.C + c) * l.taps());
          if (bw.defined()) grad_b.data_ptr<Acc>()[g * l.C + c] = gb[g];
        }
      }
    });
  });
  return {grad_logits, grad_bias_logits, grad_w.to(weight.scalar_type()),
          bias.has_value() ? grad_b.to(bias->scalar_type()) : at::empty({0}, weight.options())};
}

}  // namespace transxnet_ops
