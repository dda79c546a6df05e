// The exact (erf) GELU, x * (1 + erf(x / sqrt(2))) / 2, on the vectors of cpu_simd.h: the epilogue of the CPU
// depthwise kernels in inference (nn.GELU() after a depthwise conv in TransXNet's MS-FFN and STE).
//
// float: 1 + erf(z) is computed as erfc(|z|) for z < 0 and 2 - erfc(|z|) otherwise (no cancellation for large
// negative inputs), with erfc(a) = poly(t) exp(-a^2), t = 1 / (1 + p a): Abramowitz & Stegun 7.1.26, absolute
// error < 1.5e-7 on erf, so the GELU is within ~2e-7 of exact relative to |x| / 2 (float32 rounding is 6e-8).
// Infinities as in float64 PyTorch: gelu(+inf) = +inf, gelu(-inf) = NaN (-inf * 0); NaN stays NaN.
// exp by range reduction to [-ln2/2, ln2/2] and a degree-6 Taylor polynomial (relative error < 2e-7).
// double: std::erf lane by lane (exact; double is a checking dtype here, not a fast path).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu_simd.h"

namespace transxnet_ops::simd {

// exp(-a) for a vector of a in [0, 80] (float): 2^-n * e^-r with n = round(a / ln2), r = a - n ln2.
template <typename V>
TXN_INLINE V exp_neg(const V& a) {
  using I = Vec<int32_t, sizeof(V)>;
  const I n = __builtin_convertvector(a * 1.44269504f + 0.5f, I);  // a >= 0: truncation rounds
  const V nf = __builtin_convertvector(n, V);
  const V r = (a - nf * 0.693359375f) + nf * 2.12194440e-4f;  // ln2 split in two (Cody-Waite): r to float rounding
  V p = splat<V>(1.f / 720);
  p = p * -r + 1.f / 120;
  p = p * -r + 1.f / 24;
  p = p * -r + 1.f / 6;
  p = p * -r + 0.5f;
  p = p * -r + 1.f;
  p = p * -r + 1.f;
  const I bits = (127 - n) << 23;  // 2^-n, n <= 116 keeps it a normal float
  return p * (V)bits;  // a vector cast reinterprets the bits
}

template <typename V>
TXN_INLINE V gelu(const V& x) {
  using T = ElementOf<V>;
  if constexpr (std::is_same_v<T, float>) {
    const V z = x * 0.707106781f;
    const V abs_z = z < 0 ? -z : z;
    const V a = abs_z < 6.f ? abs_z : V{} + 6.f;  // keeps exp's range; erfc(6) < 3e-17 is 0 below
    const V t = 1.f / (1.f + 0.3275911f * a);
    V poly = splat<V>(1.061405429f);
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    const V erfc = abs_z < 6.f ? poly * t * exp_neg(a * a) : V{};  // exactly 0 far out: gelu(-1e30) = -0
    const V one_plus_erf = z < 0 ? erfc : 2.f - erfc;
    return 0.5f * x * one_plus_erf;
  } else {
    V y;
    for (int64_t l = 0; l < lanes_of<V>(); ++l) y[l] = T(0.5) * x[l] * (T(1) + std::erf(x[l] * T(M_SQRT1_2)));
    return y;
  }
}

}  // namespace transxnet_ops::simd
