// OSRA reduce path on CPU (contract in reduce/reduce.h). BatchNorm statistics are per channel, so one task
// owns a channel for the whole batch: every reduction (statistics, parameter gradients) is a plain ordered
// loop, deterministic for any thread count, and the forward and backward are each one pass over the channels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "reduce/reduce.h"

namespace transxnet_ops {
namespace {

struct Geometry {
  int64_t B, C, H, W, sr, k, pad, Ho, Wo;
  int64_t plane() const { return Ho * Wo; }
  int64_t count() const { return B * Ho * Wo; }  // elements per channel: the BatchNorm sample size
};

Geometry geometry_of(const at::Tensor& x, int64_t sr) {
  const int64_t H = x.size(2), W = x.size(3), k = sr + 3;
  return {x.size(0), x.size(1), H, W, sr, k, k / 2, osra_reduced_size(H, sr), osra_reduced_size(W, sr)};
}

// Per-channel parameters as contiguous accumulation-type tensors (any input dtype).
at::Tensor acc_values(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

template <typename Acc>
Acc gelu(Acc z) {
  return Acc(0.5) * z * (Acc(1) + std::erf(z * Acc(M_SQRT1_2)));
}

template <typename Acc>
Acc gelu_grad(Acc z) {  // Phi(z) + z * phi(z)
  const Acc cdf = Acc(0.5) * (Acc(1) + std::erf(z * Acc(M_SQRT1_2)));
  return cdf + z * std::exp(Acc(-0.5) * z * z) * Acc(0.3989422804014327);
}

// u = conv(x plane, k x k, stride sr, padding k/2) rounded to T, for one (b, c) plane.
template <typename T, typename Acc>
void strided_conv_plane(const T* x, const Acc* w, const Geometry& g, Acc* u, T* u_out) {
  for (int64_t oh = 0; oh < g.Ho; ++oh)
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      Acc acc = 0;
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t ih = oh * g.sr - g.pad + i;
        if (ih < 0 || ih >= g.H) continue;
        for (int64_t j = 0; j < g.k; ++j) {
          const int64_t iw = ow * g.sr - g.pad + j;
          if (iw >= 0 && iw < g.W) acc += w[i * g.k + j] * static_cast<Acc>(x[ih * g.W + iw]);
        }
      }
      const T rounded = static_cast<T>(acc);
      u[oh * g.Wo + ow] = static_cast<Acc>(rounded);
      if (u_out) u_out[oh * g.Wo + ow] = rounded;
    }
}

// Biased mean and M2 of v[0..n) by two ordered passes.
template <typename Acc>
std::pair<Acc, Acc> mean_and_m2(const Acc* v, int64_t n) {
  Acc sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += v[i];
  const Acc mean = sum / static_cast<Acc>(n);
  Acc m2 = 0;
  for (int64_t i = 0; i < n; ++i) m2 += (v[i] - mean) * (v[i] - mean);
  return {mean, m2};
}

// Neighbour (oh + di, ow + dj) of plane position o, or -1 outside the plane.
inline int64_t neighbour(const Geometry& g, int64_t o, int64_t di, int64_t dj) {
  const int64_t oh = o / g.Wo + di, ow = o % g.Wo + dj;
  return (oh < 0 || oh >= g.Ho || ow < 0 || ow >= g.Wo) ? -1 : oh * g.Wo + ow;
}

// Channel parameters for one channel, in Acc.
template <typename Acc>
struct Channel {
  const Acc* w1;  // k*k taps
  const Acc* w3;  // 9 taps
  Acc w2, gamma1, beta1, gamma2, beta2, bias3;
};

}  // namespace

ReduceForward osra_reduce_forward_cpu(const at::Tensor& x, const ReduceParams& p, bool training, bool save_u) {
  const Geometry g = geometry_of(x, p.sr_ratio);
  TORCH_CHECK(!training || g.count() > 1, "osra_reduce: BatchNorm training needs more than 1 value per channel, got ",
              "B * Ho * Wo = ", g.count());
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty({g.B, g.C, g.Ho, g.Wo}, x.options());
  auto u_saved = (training || save_u) ? at::empty({g.B, g.C, g.Ho, g.Wo}, x.options()) : at::empty({0}, x.options());
  auto stats = at::empty({6, g.C}, x.options().dtype(acc_type));
  const auto w1 = acc_values(p.conv1_weight, acc_type), w2 = acc_values(p.conv2_weight, acc_type);
  const auto w3 = acc_values(p.local_weight, acc_type), b3 = acc_values(p.local_bias, acc_type);
  const auto g1 = acc_values(p.bn1_weight, acc_type), be1 = acc_values(p.bn1_bias, acc_type);
  const auto g2 = acc_values(p.bn2_weight, acc_type), be2 = acc_values(p.bn2_bias, acc_type);
  const auto rm1 = acc_values(p.bn1_running_mean, acc_type), rv1 = acc_values(p.bn1_running_var, acc_type);
  const auto rm2 = acc_values(p.bn2_running_mean, acc_type), rv2 = acc_values(p.bn2_running_var, acc_type);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "osra_reduce_forward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    scalar_t* up = u_saved.numel() ? u_saved.data_ptr<scalar_t>() : nullptr;
    Acc* st = stats.data_ptr<Acc>();
    at::parallel_for(0, g.C, 1, [&](int64_t c0, int64_t c1) {
      std::vector<Acc> u(g.count()), s(g.count());
      for (int64_t c = c0; c < c1; ++c) {
        const Acc* w1c = w1.data_ptr<Acc>() + c * g.k * g.k;
        for (int64_t b = 0; b < g.B; ++b) {
          const int64_t plane = b * g.C + c;
          strided_conv_plane<scalar_t, Acc>(xp + plane * g.H * g.W, w1c, g, u.data() + b * g.plane(),
                                            up ? up + plane * g.plane() : nullptr);
        }
        const int64_t n = g.count();
        Acc mean1 = rm1.data_ptr<Acc>()[c], var1 = rv1.data_ptr<Acc>()[c], unb1 = var1;
        if (training) {
          auto [m, m2] = mean_and_m2(u.data(), n);
          mean1 = m, var1 = m2 / n, unb1 = m2 / (n - 1);
        }
        const Acc a1 = g1.data_ptr<Acc>()[c] / std::sqrt(var1 + static_cast<Acc>(p.eps1));
        const Acc shift1 = be1.data_ptr<Acc>()[c] - mean1 * a1;
        const Acc w2c = w2.data_ptr<Acc>()[c];
        for (int64_t e = 0; e < n; ++e) s[e] = w2c * gelu(a1 * u[e] + shift1);  // v = w2 * GELU(BN1(u))
        Acc mean2 = rm2.data_ptr<Acc>()[c], var2 = rv2.data_ptr<Acc>()[c], unb2 = var2;
        if (training) {
          auto [m, m2] = mean_and_m2(s.data(), n);
          mean2 = m, var2 = m2 / n, unb2 = m2 / (n - 1);
        }
        const Acc a2 = g2.data_ptr<Acc>()[c] / std::sqrt(var2 + static_cast<Acc>(p.eps2));
        const Acc shift2 = be2.data_ptr<Acc>()[c] - mean2 * a2;
        for (int64_t e = 0; e < n; ++e) s[e] = a2 * s[e] + shift2;  // s = BN2(v)
        const Acc* w3c = w3.data_ptr<Acc>() + c * 9;
        const Acc bias3 = b3.data_ptr<Acc>()[c];
        for (int64_t b = 0; b < g.B; ++b) {
          const Acc* sb = s.data() + b * g.plane();
          scalar_t* yb = yp + (b * g.C + c) * g.plane();
          for (int64_t o = 0; o < g.plane(); ++o) {
            Acc acc = bias3 + sb[o];  // local_conv(s) + s
            for (int64_t d = 0; d < 9; ++d) {
              const int64_t q = neighbour(g, o, d / 3 - 1, d % 3 - 1);
              if (q >= 0) acc += w3c[d] * sb[q];
            }
            yb[o] = static_cast<scalar_t>(acc);
          }
        }
        const Acc row[6] = {mean1, var1, unb1, mean2, var2, unb2};
        for (int r = 0; r < 6; ++r) st[r * g.C + c] = row[r];
      }
    });
  });
  return {out, u_saved, stats};
}

ReduceBackward osra_reduce_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& u_saved,
                                        const at::Tensor& stats, const ReduceParams& p, bool training) {
  const Geometry g = geometry_of(x, p.sr_ratio);
  TORCH_CHECK(u_saved.sizes() == grad_out.sizes() && grad_out.sizes() == at::IntArrayRef({g.B, g.C, g.Ho, g.Wo}),
              "osra_reduce_backward: grad_out and u must be (B, C, Ho, Wo) = (", g.B, ", ", g.C, ", ", g.Ho, ", ",
              g.Wo, "), got ", grad_out.sizes(), " and ", u_saved.sizes());
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({6, g.C}) && stats.scalar_type() == acc_type,
              "osra_reduce_backward: stats must be (6, C) in ", acc_type, ", got ", stats.sizes(), " ",
              stats.scalar_type());
  const auto st = stats.contiguous();
  const auto w1 = acc_values(p.conv1_weight, acc_type), w2 = acc_values(p.conv2_weight, acc_type);
  const auto w3 = acc_values(p.local_weight, acc_type);
  const auto g1 = acc_values(p.bn1_weight, acc_type), be1 = acc_values(p.bn1_bias, acc_type);
  const auto g2 = acc_values(p.bn2_weight, acc_type), be2 = acc_values(p.bn2_bias, acc_type);
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  // per channel: k*k conv1 taps, 9 local taps, then local bias, w2, gamma1, beta1, gamma2, beta2
  const int64_t taps1 = g.k * g.k, n_grads = taps1 + 9 + 6;
  auto grads = at::empty({g.C, n_grads}, x.options().dtype(acc_type));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "osra_reduce_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* up = u_saved.data_ptr<scalar_t>();
    const scalar_t* gyp = grad_out.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    const Acc* stp = st.data_ptr<Acc>();
    at::parallel_for(0, g.C, 1, [&](int64_t c0, int64_t c1) {
      const int64_t n = g.count(), plane = g.plane();
      std::vector<Acc> uh(n), z(n), gl(n), vh(n), s(n), ds(n), dx_plane(g.H * g.W);
      for (int64_t c = c0; c < c1; ++c) {
        const Acc r1 = Acc(1) / std::sqrt(stp[1 * g.C + c] + static_cast<Acc>(p.eps1));
        const Acc r2 = Acc(1) / std::sqrt(stp[4 * g.C + c] + static_cast<Acc>(p.eps2));
        const Acc mean1 = stp[c], mean2 = stp[3 * g.C + c];
        const Acc gamma1 = g1.data_ptr<Acc>()[c], beta1 = be1.data_ptr<Acc>()[c];
        const Acc gamma2 = g2.data_ptr<Acc>()[c], beta2 = be2.data_ptr<Acc>()[c];
        const Acc w2c = w2.data_ptr<Acc>()[c];
        const Acc* w1c = w1.data_ptr<Acc>() + c * taps1;
        const Acc* w3c = w3.data_ptr<Acc>() + c * 9;
        // recompute the forward's per-element values
        for (int64_t b = 0; b < g.B; ++b)
          for (int64_t o = 0; o < plane; ++o) {
            const int64_t e = b * plane + o;
            uh[e] = (static_cast<Acc>(up[(b * g.C + c) * plane + o]) - mean1) * r1;
            z[e] = gamma1 * uh[e] + beta1;
            gl[e] = gelu(z[e]);
            vh[e] = (w2c * gl[e] - mean2) * r2;
            s[e] = gamma2 * vh[e] + beta2;
          }
        // out = local_conv(s) + b3 + s:  ds = conv^T(dy) + dy, dw3[d] = sum dy[o] s[o + d], db3 = sum dy
        Acc dw3[9] = {0}, db3 = 0;
        for (int64_t b = 0; b < g.B; ++b) {
          const scalar_t* dy = gyp + (b * g.C + c) * plane;
          const Acc* sb = s.data() + b * plane;
          for (int64_t o = 0; o < plane; ++o) {
            const Acc dyo = static_cast<Acc>(dy[o]);
            Acc acc = dyo;
            db3 += dyo;
            for (int64_t d = 0; d < 9; ++d) {
              const int64_t q = neighbour(g, o, 1 - d / 3, 1 - d % 3);  // o - (di, dj)
              if (q >= 0) acc += w3c[d] * static_cast<Acc>(dy[q]);
              const int64_t r = neighbour(g, o, d / 3 - 1, d % 3 - 1);  // o + (di, dj)
              if (r >= 0) dw3[d] += dyo * sb[r];
            }
            ds[b * plane + o] = acc;
          }
        }
        // BN2 (+ its batch statistics in training), then v = w2 * g
        Acc dbeta2 = 0, dgamma2 = 0;
        for (int64_t e = 0; e < n; ++e) dbeta2 += ds[e], dgamma2 += ds[e] * vh[e];
        Acc dw2 = 0, dbeta1 = 0, dgamma1 = 0;
        for (int64_t e = 0; e < n; ++e) {
          const Acc dv = gamma2 * r2 * (training ? ds[e] - (dbeta2 + vh[e] * dgamma2) / n : ds[e]);
          dw2 += dv * gl[e];
          const Acc dz = w2c * dv * gelu_grad(z[e]);
          ds[e] = dz;  // ds now holds dz
          dbeta1 += dz, dgamma1 += dz * uh[e];
        }
        // BN1, then the strided conv: grad_x scattered per plane, dw1 per tap
        std::vector<Acc> dw1(taps1, Acc(0));
        for (int64_t b = 0; b < g.B; ++b) {
          const int64_t xplane = (b * g.C + c) * g.H * g.W;
          std::fill(dx_plane.begin(), dx_plane.end(), Acc(0));
          for (int64_t o = 0; o < plane; ++o) {
            const int64_t e = b * plane + o;
            const Acc du = gamma1 * r1 * (training ? ds[e] - (dbeta1 + uh[e] * dgamma1) / n : ds[e]);
            const int64_t oh = o / g.Wo, ow = o % g.Wo;
            for (int64_t i = 0; i < g.k; ++i) {
              const int64_t ih = oh * g.sr - g.pad + i;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t j = 0; j < g.k; ++j) {
                const int64_t iw = ow * g.sr - g.pad + j;
                if (iw < 0 || iw >= g.W) continue;
                dx_plane[ih * g.W + iw] += du * w1c[i * g.k + j];
                dw1[i * g.k + j] += du * static_cast<Acc>(xp[xplane + ih * g.W + iw]);
              }
            }
          }
          for (int64_t e = 0; e < g.H * g.W; ++e) gxp[xplane + e] = static_cast<scalar_t>(dx_plane[e]);
        }
        Acc* out = grads.data_ptr<Acc>() + c * n_grads;
        std::copy(dw1.begin(), dw1.end(), out);
        std::copy(dw3, dw3 + 9, out + taps1);
        const Acc rest[6] = {db3, dw2, dgamma1, dbeta1, dgamma2, dbeta2};
        std::copy(rest, rest + 6, out + taps1 + 9);
      }
    });
  });
  auto column = [&](int64_t first, int64_t count, const at::Tensor& like) {
    // a copy in the parameter's dtype and shape: outputs must not alias one buffer
    return grads.narrow(1, first, count).to(like.scalar_type(), false, true).reshape(like.sizes());
  };
  const int64_t r = taps1 + 9;
  return {grad_x,
          column(0, taps1, p.conv1_weight),
          column(r + 2, 1, p.bn1_weight),
          column(r + 3, 1, p.bn1_bias),
          column(r + 1, 1, p.conv2_weight),
          column(r + 4, 1, p.bn2_weight),
          column(r + 5, 1, p.bn2_bias),
          column(taps1, 9, p.local_weight),
          column(r, 1, p.local_bias)};
}

}  // namespace transxnet_ops
