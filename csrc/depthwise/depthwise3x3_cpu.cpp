// The 3 x 3 strip kernels (see depthwise3x3_cpu.h). Each *_impl is compiled for AVX-512, AVX2 and the baseline
// and picked at run time (TXN_DISPATCH_ISA, cpu_simd.h).
#include "depthwise/depthwise3x3_cpu.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "cpu_gelu.h"
#include "cpu_simd.h"

namespace transxnet_ops::depthwise {
namespace {

using simd::loadu;
using simd::splat;
using simd::storeu;
using simd::Vec;

// Lane j = v[j - 1], lane 0 = 0: the left neighbours of a vector that starts at column 0.
template <typename V, size_t... J>
TXN_INLINE V shift_in_zero_low(const V& v, std::index_sequence<J...>) {
  constexpr int L = simd::lanes_of<V>();
  return __builtin_shufflevector(V{}, v, (J == 0 ? 0 : L + int(J) - 1)...);
}

// Lane j = v[j + 1], the last lane = 0: the right neighbours of a vector that ends at the last column.
template <typename V, size_t... J>
TXN_INLINE V shift_in_zero_high(const V& v, std::index_sequence<J...>) {
  constexpr int L = simd::lanes_of<V>();
  return __builtin_shufflevector(v, V{}, (int(J) + 1 < L ? int(J) + 1 : L)...);
}

// The row's pixels at columns c - 1, c, c + 1 (p: column c) through map, zero outside the plane: First / Last say
// that the vector starts at column 0 / ends at the last column.
template <typename V, bool First, bool Last, typename T, typename Map>
TXN_INLINE void load_neighbours(const T* p, V& left, V& centre, V& right, const Map& map) {
  constexpr auto lanes = std::make_index_sequence<simd::lanes_of<V>()>{};
  centre = map(loadu<V>(p));
  if constexpr (First) {
    left = shift_in_zero_low(centre, lanes);
  } else {
    left = map(loadu<V>(p - 1));
  }
  if constexpr (Last) {
    right = shift_in_zero_high(centre, lanes);
  } else {
    right = map(loadu<V>(p + 1));
  }
}

struct Identity {
  template <typename V>
  TXN_INLINE V operator()(const V& v) const { return v; }
};

// v * scale + shift: an eval BatchNorm before the conv (ForwardMaps).
template <typename V>
struct Affine {
  V scale, shift;
  TXN_INLINE V operator()(const V& v) const { return v * scale + shift; }
};

// Output rows of the register tile at ISA level VB: independent accumulators, enough FMA chains to hide the
// latency, within the register file (with the 9 weights and 3 input vectors: 20 of AVX-512's 32, 16 of AVX2's 16).
template <int VB>
constexpr int kRows3x3 = VB == 64 ? 8 : 4;

// Planes narrower than a vector but at least half as wide run on half vectors (AVX-512 and AVX2 only, so that a
// half vector is a register of the same ISA): 14 columns on two 8-float strips rather than lane-packing.
template <int VB>
constexpr bool kHalfStrips = VB >= 32;

// Column strip c (columns [c, c + lanes)) of y = bias + map(x) correlated with w, through the GELU if Gelu; R
// output rows at a time.
template <typename V, int R, bool First, bool Last, bool Gelu, typename T, typename Map>
TXN_INLINE void correlate_strip(const T* x, const V (&w)[9], const V& bias, T* y, int64_t c, int64_t H, int64_t W,
                                const Map& map) {
  for (int64_t h0 = 0; h0 < H; h0 += R) {
    V acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = bias;
#pragma GCC unroll 10
    for (int t = 0; t < R + 2; ++t) {  // input row h0 - 1 + t is tap row i of output row h0 + t - i
      const int64_t row = h0 - 1 + t;
      if (row < 0 || row >= H) continue;
      V left, centre, right;
      load_neighbours<V, First, Last>(x + row * W + c, left, centre, right, map);
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i) {
        const int o = t - i;
        if (o < 0 || o >= R) continue;
        acc[o] += w[3 * i] * left;
        acc[o] += w[3 * i + 1] * centre;
        acc[o] += w[3 * i + 2] * right;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      if (h0 + r < H) storeu(y + (h0 + r) * W + c, Gelu ? simd::gelu(acc[r]) : acc[r]);
  }
}

// Runs strip(c, skip, first, last) for every column strip c (the last one ends at column W, overlapping the one
// before when W is not a whole number of vectors: its first `skip` lanes repeat that strip's columns); first / last
// (std::true_type or std::false_type): the strip starts at column 0 / ends at column W.
template <typename V, typename Strip>
TXN_INLINE void for_each_strip(int64_t W, const Strip& strip) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int64_t c0 = 0; c0 < W; c0 += lanes) {
    const int64_t c = std::min(c0, W - lanes), skip = c0 - c;
    const bool first = c == 0, last = c + lanes == W;
    if (first && last) {
      strip(c, skip, std::true_type{}, std::true_type{});
    } else if (first) {
      strip(c, skip, std::true_type{}, std::false_type{});
    } else if (last) {
      strip(c, skip, std::false_type{}, std::true_type{});
    } else {
      strip(c, skip, std::false_type{}, std::false_type{});
    }
  }
}

// VB: the ISA level; VS: the strips' vector width (VB or VB / 2).
template <typename T, int VB, int VS, bool Gelu, typename Map>
TXN_INLINE void correlate3x3_strips(const T* x, const T* k, T bias, T* y, int64_t H, int64_t W, const Map& map) {
  using V = Vec<T, VS>;
  V w[9];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) w[t] = splat<V>(k[t]);
  const V b = splat<V>(bias);
  for_each_strip<V>(W, [&](int64_t c, int64_t, auto first, auto last) TXN_INLINE_LAMBDA {
    correlate_strip<V, kRows3x3<VB>, decltype(first)::value, decltype(last)::value, Gelu>(x, w, b, y, c, H, W, map);
  });
}

template <typename T, int VB, int VS>
TXN_INLINE void correlate3x3_maps(const T* x, const T* k, T bias, T* y, int64_t H, int64_t W,
                                  const ForwardMaps<T>& maps) {
  using V = Vec<T, VS>;
  if (maps.scale) {
    const Affine<V> affine{splat<V>(*maps.scale), splat<V>(*maps.shift)};
    if (maps.gelu) return correlate3x3_strips<T, VB, VS, true>(x, k, bias, y, H, W, affine);
    return correlate3x3_strips<T, VB, VS, false>(x, k, bias, y, H, W, affine);
  }
  if (maps.gelu) return correlate3x3_strips<T, VB, VS, true>(x, k, bias, y, H, W, Identity{});
  correlate3x3_strips<T, VB, VS, false>(x, k, bias, y, H, W, Identity{});
}

template <typename T, int VB>
TXN_INLINE void correlate3x3_impl(const T* x, const T* k, T bias, T* y, int64_t H, int64_t W,
                                  const ForwardMaps<T>& maps) {
  if constexpr (kHalfStrips<VB>) {
    if (W < simd::lanes_of<Vec<T, VB>>()) return correlate3x3_maps<T, VB, VB / 2>(x, k, bias, y, H, W, maps);
  }
  correlate3x3_maps<T, VB, VB>(x, k, bias, y, H, W, maps);
}

// a[3 i + j] += sum over the strip's outputs of gy * (tap (i, j) of x); a[9] += sum of gy. keep: 0 on the lanes
// that repeat the previous strip's columns, 1 elsewhere.
template <typename V, bool First, bool Last, typename T>
TXN_INLINE void weight_grad_strip(const T* gy, const T* x, V (&a)[10], const V& keep, int64_t c, int64_t H,
                                  int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const V g = loadu<V>(gy + h * W + c) * keep;
    a[9] += g;
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
      const int64_t row = h + i - 1;
      if (row < 0 || row >= H) continue;
      V left, centre, right;
      load_neighbours<V, First, Last>(x + row * W + c, left, centre, right, Identity{});
      a[3 * i] += g * left;
      a[3 * i + 1] += g * centre;
      a[3 * i + 2] += g * right;
    }
  }
}

// acc: 10 vectors at the ISA level; half-vector strips use the low half of each.
template <typename T, int VS>
TXN_INLINE void weight_grad3x3_strips(const T* gy, const T* x, T* acc, int64_t acc_stride, int64_t H, int64_t W) {
  using V = Vec<T, VS>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  V a[10];
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) a[t] = loadu<V>(acc + t * acc_stride);
  for_each_strip<V>(W, [&](int64_t c, int64_t skip, auto first, auto last) TXN_INLINE_LAMBDA {
    V keep;
    for (int64_t l = 0; l < lanes; ++l) keep[l] = l < skip ? T(0) : T(1);
    weight_grad_strip<V, decltype(first)::value, decltype(last)::value>(gy, x, a, keep, c, H, W);
  });
#pragma GCC unroll 10
  for (int t = 0; t < 10; ++t) storeu(acc + t * acc_stride, a[t]);
}

template <typename T, int VB>
TXN_INLINE void weight_grad3x3_impl(const T* gy, const T* x, T* acc, int64_t H, int64_t W) {
  constexpr int64_t lanes = simd::lanes_of<Vec<T, VB>>();
  if constexpr (kHalfStrips<VB>) {
    if (W < lanes) return weight_grad3x3_strips<T, VB / 2>(gy, x, acc, lanes, H, W);
  }
  weight_grad3x3_strips<T, VB>(gy, x, acc, lanes, H, W);
}

template <typename T, int VB>
TXN_INLINE void lane_sums3x3_impl(const T* acc, T* gw, T* gb) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int t = 0; t < 9; ++t) gw[t] = simd::lane_sum(loadu<V>(acc + t * lanes));
  *gb = simd::lane_sum(loadu<V>(acc + 9 * lanes));
}

TXN_DISPATCH_ISA(correlate3x3,
                 (const T* x, const T* k, T bias, T* y, int64_t H, int64_t W, const ForwardMaps<T>& maps),
                 (x, k, bias, y, H, W, maps))
TXN_DISPATCH_ISA(weight_grad3x3, (const T* gy, const T* x, T* acc, int64_t H, int64_t W), (gy, x, acc, H, W))
TXN_DISPATCH_ISA(lane_sums3x3, (const T* acc, T* gw, T* gb), (acc, gw, gb))

}  // namespace

template <typename T>
int64_t strip3x3_min_width() {
  const int64_t lanes = simd::vector_lanes<T>();
  return simd::cpu_isa() == simd::Isa::kBaseline ? lanes : lanes / 2;
}

template <typename T>
void Grads3x3<T>::zero() {
  acc.assign(10 * simd::vector_lanes<T>(), T(0));
}

template <typename T>
void forward3x3(const T* x, const T* k, T bias, T* y, int64_t H, int64_t W, const ForwardMaps<T>& maps) {
  TORCH_INTERNAL_ASSERT(H > 0 && W >= strip3x3_min_width<T>());
  correlate3x3(x, k, bias, y, H, W, maps);
}

template <typename T>
void backward3x3(const T* gy, const T* x, const T* k, T* gx, int64_t H, int64_t W, Grads3x3<T>& g) {
  TORCH_INTERNAL_ASSERT(H > 0 && W >= strip3x3_min_width<T>() && g.acc.size() == size_t(10 * simd::vector_lanes<T>()));
  T flipped[9];
  std::reverse_copy(k, k + 9, flipped);
  correlate3x3<T>(gy, flipped, T(0), gx, H, W, ForwardMaps<T>{});
  weight_grad3x3(gy, x, g.acc.data(), H, W);
}

template <typename T>
void grads3x3(const Grads3x3<T>& g, T* gw, T* gb) {
  lane_sums3x3(g.acc.data(), gw, gb);
}

#define TXN_INSTANTIATE(T)                                                                         \
  template int64_t strip3x3_min_width<T>();                                                        \
  template struct Grads3x3<T>;                                                                     \
  template void forward3x3<T>(const T*, const T*, T, T*, int64_t, int64_t, const ForwardMaps<T>&); \
  template void backward3x3<T>(const T*, const T*, const T*, T*, int64_t, int64_t, Grads3x3<T>&); \
  template void grads3x3<T>(const Grads3x3<T>&, T*, T*);
TXN_INSTANTIATE(float)
TXN_INSTANTIATE(double)
#undef TXN_INSTANTIATE

}  // namespace transxnet_ops::depthwise
