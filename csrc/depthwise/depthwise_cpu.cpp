// The depthwise kernel family's vector code and drivers (see depthwise_cpu.h for the design). Each function named
// *_impl is compiled for AVX-512, AVX2 and the baseline and picked at run time (TXN_DISPATCH_ISA, cpu_simd.h).
#include "depthwise/depthwise_cpu.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <type_traits>

#include "cpu_gelu.h"
#include "cpu_simd.h"

// The window fills write a few vectors of zeros per row; GCC would turn those loops into memset calls, which
// cost more than the stores at these sizes.
#pragma GCC optimize("no-tree-loop-distribute-patterns")

namespace transxnet_ops::depthwise {
namespace {

using simd::loadu;
using simd::storeu;
using simd::Vec;

// A window read as `count` lines of `positions` outputs (whole tiles), each output a vector. Tap (a, b) of output
// p of line n reads in[n * line_in + (p + a) * step_a + b * step_b]; the output goes to
// out[n * line_out + p * out_step] if p < stored. The kernel is K x K, its taps along the line padded with zeros
// to KAp (whole chunks of KA); its weights are vectors w[(b * KAp + a) * lanes + l] (lane l's kernel). gelu: the
// outputs go through the GELU (inference epilogue).
struct Lines {
  int64_t count, positions;
  int64_t line_in, step_a, step_b;
  int64_t line_out, out_step, stored;
  int64_t K, KA, KAp;
  bool gelu = false;
};

// ------------------------------------------------------------------------------------------- vector helpers

using simd::HalfOf;
using simd::lane_sum;
using simd::splat;

// dst[0:n] = src[0:n] for n < lanes, in halving steps (no loop the compiler would turn into a memcpy call).
template <typename V, typename T>
TXN_INLINE void copy_short(T* dst, const T* src, int64_t n) {
  using H = HalfOf<V>;
  constexpr int64_t half = sizeof(H) / sizeof(T);
  if (n >= half) {
    std::memcpy(dst, src, sizeof(H));
    dst += half, src += half, n -= half;
  }
  if constexpr (half > 1) {
    if (n > 0) copy_short<H>(dst, src, n);
  }
}

// The first n <= lanes elements of p, the rest zero, reading nothing past them.
template <typename V, typename T>
TXN_INLINE V load_first(const T* p, int64_t n) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  if (n == lanes) return loadu<V>(p);
  T tmp[lanes] = {};
  copy_short<V>(tmp, p, n);
  return loadu<V>(tmp);
}

// The first n <= lanes lanes of v to p, writing nothing past them.
template <typename V, typename T>
TXN_INLINE void store_first(T* p, const V& v, int64_t n) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  if (n == lanes) return storeu(p, v);
  T tmp[lanes];
  storeu(tmp, v);
  copy_short<V>(p, tmp, n);
}

// Zeros [dst, dst + n) in whole vectors: may write up to lanes - 1 elements past it (callers leave room, and
// write those elements afterwards).
template <typename V, typename T>
TXN_INLINE void zero_over(T* dst, int64_t n) {
  for (int64_t i = 0; i < n; i += simd::lanes_of<V>()) storeu(dst + i, V{});
}

// ------------------------------------------------------------------------------------------- line kernels

// Tap rows processed together by the weight gradient: 2 where the register file holds two sets of accumulators
// (AVX-512: 32 registers), giving 14 independent FMA chains instead of 7.
template <typename V>
constexpr int kPair = sizeof(V) == 64 ? 2 : 1;

// acc[l][r] += sum_{b < K, a < KAp} w(b, a) * in[l * line_in + (r + a) * step_a + b * step_b] for a tile of R
// outputs on each of NL lines.
template <typename V, int KA, int NL, int R, typename T>
TXN_INLINE void correlate_tile(V (&acc)[NL][R], const T* __restrict in, const T* __restrict w, const Lines& L) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int64_t b = 0; b < L.K; ++b) {
    for (int64_t a0 = 0; a0 < L.KAp; a0 += KA) {
      V wa[KA];
#pragma GCC unroll 8
      for (int a = 0; a < KA; ++a) wa[a] = loadu<V>(w + (b * L.KAp + a0 + a) * lanes);
#pragma GCC unroll 2
      for (int l = 0; l < NL; ++l) {
        const T* src = in + l * L.line_in + b * L.step_b + a0 * L.step_a;
#pragma GCC unroll 24
        for (int t = 0; t < R + KA - 1; ++t, src += L.step_a) {
          const V v = loadu<V>(src);
#pragma GCC unroll 8
          for (int a = 0; a < KA; ++a) {
            if (t - a >= 0 && t - a < R) acc[l][t - a] += wa[a] * v;
          }
        }
      }
    }
  }
}

// Outputs [p0, p0 + R) of lines n .. n + NL - 1 = bias + their correlation (through the GELU if Gelu).
template <typename V, int KA, int NL, int R, bool Gelu, typename T>
TXN_INLINE void correlate_tile_at(const T* in, const T* w, const V& bias, T* out, int64_t n, int64_t p0,
                                  const Lines& L) {
  V acc[NL][R];
#pragma GCC unroll 2
  for (int l = 0; l < NL; ++l)
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[l][r] = bias;
  correlate_tile<V, KA, NL, R>(acc, in + n * L.line_in + p0 * L.step_a, w, L);
  const int64_t rows = std::min<int64_t>(R, L.stored - p0);
#pragma GCC unroll 2
  for (int l = 0; l < NL; ++l) {
    T* dst = out + (n + l) * L.line_out + p0 * L.out_step;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
      if (r < rows) storeu(dst + r * L.out_step, Gelu ? simd::gelu(acc[l][r]) : acc[l][r]);
  }
}

// Register tiles: with AVX-512, 14 outputs of a line, or 7 on each of two lines when lines are 7 long (two
// independent sets of 7 FMA chains either way); else 7 outputs of a line.
template <typename V, int KA, bool Gelu, typename T>
TXN_INLINE void correlate_lines_ka(const T* in, const T* w, const V& bias, T* out, const Lines& L) {
  constexpr bool wide = sizeof(V) == 64;
  if (wide && L.positions == kTile) {
    int64_t n = 0;
    for (; n + 2 <= L.count; n += 2) correlate_tile_at<V, KA, 2, kTile, Gelu>(in, w, bias, out, n, 0, L);
    if (n < L.count) correlate_tile_at<V, KA, 1, kTile, Gelu>(in, w, bias, out, n, 0, L);
    return;
  }
  for (int64_t n = 0; n < L.count; ++n) {
    int64_t p0 = 0;
    if constexpr (wide) {
      for (; p0 + 2 * kTile <= L.positions; p0 += 2 * kTile)
        correlate_tile_at<V, KA, 1, 2 * kTile, Gelu>(in, w, bias, out, n, p0, L);
    }
    for (; p0 < L.positions; p0 += kTile) correlate_tile_at<V, KA, 1, kTile, Gelu>(in, w, bias, out, n, p0, L);
  }
}

template <typename V, bool Gelu, typename T>
TXN_INLINE void correlate_lines_gelu(const T* in, const T* w, const V& b, T* out, const Lines& L) {
  switch (L.KA) {
    case 1: return correlate_lines_ka<V, 1, Gelu>(in, w, b, out, L);
    case 3: return correlate_lines_ka<V, 3, Gelu>(in, w, b, out, L);
    case 5: return correlate_lines_ka<V, 5, Gelu>(in, w, b, out, L);
    default: return correlate_lines_ka<V, 7, Gelu>(in, w, b, out, L);
  }
}

// out = bias + in correlated with w, for every line (bias: one vector).
template <typename T, int VB>
TXN_INLINE void correlate_lines_impl(const T* in, const T* w, const T* bias, T* out, const Lines& L) {
  using V = Vec<T, VB>;
  const V b = loadu<V>(bias);
  if (L.gelu) return correlate_lines_gelu<V, true>(in, w, b, out, L);
  correlate_lines_gelu<V, false>(in, w, b, out, L);
}

// gw[(b * KAp + a) * lanes + l] += sum over outputs (n, p) of gy(n, p) * in(n, p + a, b), lane by lane, for NB
// tap rows b0 .. b0 + NB - 1 and a in [a0, a0 + KA); gy(n, p) = gy[n * line_in + p * step_a].
template <typename V, int KA, int NB, typename T>
TXN_INLINE void weight_grad_taps(const T* __restrict gy, const T* __restrict in, T* __restrict gw, int64_t b0,
                                 int64_t a0, const Lines& L) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  V acc[NB][KA] = {};
  for (int64_t n = 0; n < L.count; ++n) {
    for (int64_t p0 = 0; p0 < L.positions; p0 += kTile) {
      const T* g = gy + n * L.line_in + p0 * L.step_a;
      V gv[kTile];
#pragma GCC unroll 8
      for (int r = 0; r < kTile; ++r) gv[r] = loadu<V>(g + r * L.step_a);
#pragma GCC unroll 2
      for (int nb = 0; nb < NB; ++nb) {
        const T* src = in + n * L.line_in + (p0 + a0) * L.step_a + (b0 + nb) * L.step_b;
#pragma GCC unroll 16
        for (int t = 0; t < kTile + KA - 1; ++t, src += L.step_a) {
          const V v = loadu<V>(src);
#pragma GCC unroll 8
          for (int a = 0; a < KA; ++a) {
            if (t - a >= 0 && t - a < kTile) acc[nb][a] += gv[t - a] * v;
          }
        }
      }
    }
  }
  for (int nb = 0; nb < NB; ++nb)
    for (int a = 0; a < KA; ++a) {
      T* dst = gw + ((b0 + nb) * L.KAp + a0 + a) * lanes;
      storeu(dst, loadu<V>(dst) + acc[nb][a]);
    }
}

template <typename V, int KA, typename T>
TXN_INLINE void weight_grad_lines_ka(const T* gy, const T* in, T* gw, const Lines& L) {
  constexpr int NB = kPair<V>;
  for (int64_t a0 = 0; a0 < L.KAp; a0 += KA) {
    int64_t b = 0;
    for (; b + NB <= L.K; b += NB) weight_grad_taps<V, KA, NB>(gy, in, gw, b, a0, L);
    for (; b < L.K; ++b) weight_grad_taps<V, KA, 1>(gy, in, gw, b, a0, L);
  }
}

// gw[(b * KAp + a) * lanes + l] += sum over outputs (n, p) of gy(n, p) * in(n, p + a, b), lane by lane, and
// gb[l] += sum of gy(n, p), where gy(n, p) = gy_win[n * line_in + (p + K/2) * step_a + K/2 * step_b] (the
// gradient window has the input window's layout) must be zero at positions that are not outputs.
template <typename T, int VB>
TXN_INLINE void weight_grad_lines_impl(const T* gy_win, const T* in, T* gw, T* gb, const Lines& L) {
  using V = Vec<T, VB>;
  const T* gy = gy_win + (L.K / 2) * (L.step_a + L.step_b);
  V bias_sum = {};
  for (int64_t n = 0; n < L.count; ++n)
    for (int64_t p = 0; p < L.positions; ++p) bias_sum += loadu<V>(gy + n * L.line_in + p * L.step_a);
  storeu(gb, loadu<V>(gb) + bias_sum);
  switch (L.KA) {
    case 1: return weight_grad_lines_ka<V, 1>(gy, in, gw, L);
    case 3: return weight_grad_lines_ka<V, 3>(gy, in, gw, L);
    case 5: return weight_grad_lines_ka<V, 5>(gy, in, gw, L);
    default: return weight_grad_lines_ka<V, 7>(gy, in, gw, L);
  }
}

// ------------------------------------------------------------------------------------------- row layout

// Plane rows [h0, h1) and their halo into a row-layout window (win: window_rows(h1 - h0) * stride elements plus
// 2 * lanes of slack), each pixel p as p * scale + shift if Affine. Whole-vector moves only: a row's zero padding
// may spill into the next window row, which is written after it, and a plane row narrower than a vector is read
// with the start of the next plane row, which the right padding then overwrites (except for the plane's last row,
// which is read exactly).
template <typename V, bool Affine, typename T>
TXN_INLINE void fill_rows(const T* plane, int64_t h0, int64_t h1, const RowLayout& g, T* win, T scale, T shift) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  const V a = splat<V>(scale), b = splat<V>(shift);
  auto map = [&](const V& v) TXN_INLINE_LAMBDA { return Affine ? v * a + b : v; };
  const int64_t last = std::min(g.H, h1 + g.pad);  // plane rows past the band's halo stay zero
  for (int64_t r = 0; r < g.window_rows(h1 - h0); ++r) {
    T* dst = win + r * g.stride;
    const int64_t pr = h0 - g.pad + r;
    if (pr < 0 || pr >= last) {
      zero_over<V>(dst, g.stride);
      continue;
    }
    const T* src = plane + pr * g.W;
    for (int64_t c = 0; c < g.W; c += 64 / sizeof(T)) __builtin_prefetch(src + 4 * g.W + c);
    zero_over<V>(dst, g.pad);
    if (g.W >= lanes) {
      for (int64_t c = 0; c + lanes < g.W; c += lanes) storeu(dst + g.pad + c, map(loadu<V>(src + c)));
      storeu(dst + g.pad + g.W - lanes, map(loadu<V>(src + g.W - lanes)));
    } else if (pr + 1 < g.H) {
      storeu(dst + g.pad, map(loadu<V>(src)));
    } else {
      storeu(dst + g.pad, map(load_first<V>(src, g.W)));
    }
    zero_over<V>(dst + g.pad + g.W, g.stride - g.pad - g.W);
  }
}

// scale / shift: this plane's affine map, or null.
template <typename T, int VB>
TXN_INLINE void fill_row_window_impl(const T* plane, int64_t h0, int64_t h1, const RowLayout& g, T* win,
                                     const T* scale, const T* shift) {
  using V = Vec<T, VB>;
  if (scale) return fill_rows<V, true>(plane, h0, h1, g, win, *scale, *shift);
  fill_rows<V, false>(plane, h0, h1, g, win, T(1), T(0));
}

// The kernel k (K x K) as weight vectors: every lane of w[j * KAp + i] = k[i][j] (rotated by 180 degrees if
// flip), zero for i >= K.
template <typename T, int VB>
TXN_INLINE void row_weights_to_impl(const T* k, bool flip, const RowLayout& g, T* w) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  const int64_t K = g.K, last = K * K - 1;
  for (int64_t j = 0; j < K; ++j)
    for (int64_t i = 0; i < g.KAp; ++i) {
      const T value = i < K ? k[flip ? last - (i * K + j) : i * K + j] : T(0);
      storeu(w + (j * g.KAp + i) * lanes, splat<V>(value));
    }
}

// dst[r * dst_stride + c] = src[r * lanes + c] for r < rows, c < cols <= lanes. Whole vectors except on the last
// row: each row spills lanes - cols elements into the next row of dst, which the caller writes afterwards.
template <typename T, int VB>
TXN_INLINE void copy_rows_spilling_impl(T* dst, int64_t dst_stride, const T* src, int64_t rows, int64_t cols) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int64_t r = 0; r + 1 < rows; ++r) storeu(dst + r * dst_stride, loadu<V>(src + r * lanes));
  if (rows > 0) store_first(dst + (rows - 1) * dst_stride, loadu<V>(src + (rows - 1) * lanes), cols);
}

// gw[i * K + j] and *gb: the row layout's accumulators summed over the lanes.
template <typename T, int VB>
TXN_INLINE void row_lane_sums_impl(const RowLayout& g, const T* gw_acc, const T* gb_acc, T* gw, T* gb) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int64_t i = 0; i < g.K; ++i)
    for (int64_t j = 0; j < g.K; ++j) gw[i * g.K + j] = lane_sum(loadu<V>(gw_acc + (j * g.KAp + i) * lanes));
  *gb = lane_sum(loadu<V>(gb_acc));
}

// ------------------------------------------------------------------------------------------- packed layout
// Planes go in and out of the packed layout as lanes x lanes blocks (lanes planes x lanes consecutive elements)
// transposed in registers. Blocks start at 0, lanes, 2 lanes, ... and the last one ends at the plane's end,
// overlapping the one before (its repeated elements are written twice, with the same values).

// Start of block o of a plane of `size` elements, and the number of elements it covers (< lanes only when
// size < lanes).
template <typename V>
TXN_INLINE int64_t block_start(int64_t o, int64_t size) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  return o + lanes <= size || size < lanes ? o : size - lanes;
}

// rows[l] = elements [o, o + m) of plane l (plane_stride apart) for l < n, zero elsewhere.
template <typename V, typename T>
TXN_INLINE void load_block(V* rows, const T* planes, int64_t plane_stride, int64_t n, int64_t o, int64_t m) {
  constexpr int64_t lanes = simd::lanes_of<V>();
#pragma GCC unroll 16
  for (int64_t l = 0; l < lanes; ++l) rows[l] = l < n ? load_first<V>(planes + l * plane_stride + o, m) : V{};
}

// put(e, v) for every e in [0, size), v[l] = element e of plane l (planes plane_stride apart) for l < n, zero in
// the other lanes: lanes x lanes blocks transposed in registers.
template <typename V, typename T, typename Put>
TXN_INLINE void for_each_element_across(const T* planes, int64_t plane_stride, int64_t size, int64_t n,
                                        const Put& put) {
  constexpr int64_t lanes = simd::lanes_of<V>();
  for (int64_t o0 = 0; o0 < size; o0 += lanes) {
    const int64_t o = block_start<V>(o0, size), m = std::min(lanes, size - o);
    V block[lanes];
    load_block(block, planes, plane_stride, n, o, m);
    simd::transpose(block);  // block[j]: element o + j of every plane
    for (int64_t j = 0; j < m; ++j) put(o + j, block[j]);
  }
}

// n <= lanes consecutive planes into a packed window ((H + K - 1) * cols * lanes elements); plane l's pixels p as
// p * scale[l] + shift[l] if scale (null: as they are).
template <typename T, int VB>
TXN_INLINE void fill_packed_window_impl(const T* planes, int64_t n, const PackedLayout& g, T* win, const T* scale,
                                        const T* shift) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  const int64_t HW = g.H * g.W;
  V a = splat<V>(T(1)), b{};
  for (int64_t l = 0; scale && l < n; ++l) a[l] = scale[l], b[l] = shift[l];
  zero_over<V>(win, (g.H + g.K - 1) * g.cols * lanes);
  for_each_element_across<V>(planes, HW, HW, n, [&](int64_t e, const V& px) TXN_INLINE_LAMBDA {
    const int64_t h = e / g.W, c = e % g.W;
    storeu(win + ((h + g.pad) * g.cols + c + g.pad) * lanes, scale ? px * a + b : px);
  });
}

// n kernels (K x K each, consecutive) as weight vectors: w[(i * KAp + j) * lanes + l] = kernel l's [i][j]
// (rotated by 180 degrees if flip), zero for j >= K or l >= n.
template <typename T, int VB>
TXN_INLINE void packed_weights_to_impl(const T* k, int64_t n, bool flip, const PackedLayout& g, T* w) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  const int64_t KK = g.K * g.K;
  if (g.KAp > g.K) zero_over<V>(w, g.K * g.KAp * lanes);
  for_each_element_across<V>(k, KK, KK, n, [&](int64_t e, const V& taps) TXN_INLINE_LAMBDA {
    const int64_t t = flip ? KK - 1 - e : e;  // taps: tap e of every kernel
    storeu(w + ((t / g.K) * g.KAp + t % g.K) * lanes, taps);
  });
}

// The (H, Wt, lanes) output buffer into n planes.
template <typename T, int VB>
TXN_INLINE void store_packed_impl(const T* out, int64_t n, const PackedLayout& g, T* planes) {
  using V = Vec<T, VB>;
  constexpr int64_t lanes = simd::lanes_of<V>();
  const int64_t HW = g.H * g.W;
  for (int64_t o0 = 0; o0 < HW; o0 += lanes) {
    const int64_t o = block_start<V>(o0, HW), m = std::min(lanes, HW - o);
    V rows[lanes];
#pragma GCC unroll 16
    for (int64_t j = 0; j < lanes; ++j)
      rows[j] = j < m ? loadu<V>(out + (((o + j) / g.W) * g.Wt + (o + j) % g.W) * lanes) : V{};
    simd::transpose(rows);  // rows[l]: elements o .. o + m of plane l
    for (int64_t l = 0; l < n; ++l) store_first(planes + l * HW + o, rows[l], m);
  }
}

TXN_DISPATCH_ISA(correlate_lines, (const T* in, const T* w, const T* bias, T* out, const Lines& L),
                 (in, w, bias, out, L))
TXN_DISPATCH_ISA(weight_grad_lines, (const T* gy_win, const T* in, T* gw, T* gb, const Lines& L),
                 (gy_win, in, gw, gb, L))
TXN_DISPATCH_ISA(fill_row_window,
                 (const T* plane, int64_t h0, int64_t h1, const RowLayout& g, T* win, const T* scale, const T* shift),
                 (plane, h0, h1, g, win, scale, shift))
TXN_DISPATCH_ISA(row_weights_to, (const T* k, bool flip, const RowLayout& g, T* w), (k, flip, g, w))
TXN_DISPATCH_ISA(copy_rows_spilling, (T* dst, int64_t dst_stride, const T* src, int64_t rows, int64_t cols),
                 (dst, dst_stride, src, rows, cols))
TXN_DISPATCH_ISA(row_lane_sums, (const RowLayout& g, const T* gw_acc, const T* gb_acc, T* gw, T* gb),
                 (g, gw_acc, gb_acc, gw, gb))
TXN_DISPATCH_ISA(fill_packed_window,
                 (const T* planes, int64_t n, const PackedLayout& g, T* win, const T* scale, const T* shift),
                 (planes, n, g, win, scale, shift))
TXN_DISPATCH_ISA(packed_weights_to, (const T* k, int64_t n, bool flip, const PackedLayout& g, T* w),
                 (k, n, flip, g, w))
TXN_DISPATCH_ISA(store_packed, (const T* out, int64_t n, const PackedLayout& g, T* planes), (out, n, g, planes))

constexpr int64_t kMaxLanes = 16;  // float with AVX-512

// Output rows [h0, h0 + rows) of a row-layout plane (out: the plane's row h0) = bias + win correlated with w,
// stored straight into the plane. A last line that is partly outside the plane goes first, through ws.out, and
// its spill into the next rows is then overwritten by the whole lines.
template <typename T>
void correlate_rows(const T* win, const T* w, const T* bias, T* out, int64_t rows, const RowLayout& g,
                    Workspace<T>& ws, bool gelu = false) {
  const int64_t full = g.W / g.lanes, lines = g.Wp / g.lanes;
  for (int64_t e = 0; e < rows * g.W; e += 64 / sizeof(T)) __builtin_prefetch(out + e, 1);  // the rows to write
  Lines L{lines, round_up(rows, kTile), g.lanes, g.stride, 1, g.lanes, g.W, rows, g.K, g.KA, g.KAp, gelu};
  if (full < lines) {
    Lines tail = L;
    tail.count = 1;
    tail.out_step = g.lanes;
    ws.out.resize(tail.positions * g.lanes);
    correlate_lines(win + full * g.lanes, w, bias, ws.out.data(), tail);
    copy_rows_spilling(out + full * g.lanes, g.W, ws.out.data(), rows, g.W - full * g.lanes);
  }
  L.count = full;
  if (full > 0) correlate_lines(win, w, bias, out, L);
}

template <typename T>
int64_t row_window_size(const RowLayout& g, int64_t rows) {
  return g.window_rows(rows) * g.stride + 2 * g.lanes;
}

}  // namespace

template <typename T>
int64_t lanes_for() {
  return simd::vector_lanes<T>();
}

template <typename T>
void row_weights(const T* k, bool flip, const RowLayout& g, Workspace<T>& ws) {
  TORCH_INTERNAL_ASSERT(g.lanes == lanes_for<T>() && g.lanes <= kMaxLanes);
  ws.weights.resize(g.K * g.KAp * g.lanes);
  row_weights_to(k, flip, g, ws.weights.data());
}

template <typename T>
void forward_rows(const T* x, T bias, T* y, int64_t h0, int64_t h1, const RowLayout& g, Workspace<T>& ws,
                  const ForwardMaps<T>& maps) {
  TORCH_INTERNAL_ASSERT(ws.weights.size() == size_t(g.K * g.KAp * g.lanes));
  ws.x_win.resize(row_window_size<T>(g, h1 - h0));
  fill_row_window(x, h0, h1, g, ws.x_win.data(), maps.scale, maps.shift);
  T b[kMaxLanes];
  std::fill_n(b, g.lanes, bias);
  correlate_rows(ws.x_win.data(), ws.weights.data(), b, y + h0 * g.W, h1 - h0, g, ws, maps.gelu);
}

template <typename T>
void backward_rows(const T* gy, const T* x, T* gx, const RowLayout& g, Workspace<T>& ws) {
  TORCH_INTERNAL_ASSERT(ws.weights.size() == size_t(g.K * g.KAp * g.lanes));
  TORCH_INTERNAL_ASSERT(ws.gw.size() == size_t(g.K * g.KAp * g.lanes) && ws.gb.size() == size_t(g.lanes));
  const T zero[kMaxLanes] = {};
  for (int64_t h0 = 0; h0 < g.H; h0 += g.band) {
    const int64_t h1 = std::min(g.H, h0 + g.band), rows = h1 - h0;
    ws.gy_win.resize(row_window_size<T>(g, rows));
    ws.x_win.resize(ws.gy_win.size());
    fill_row_window<T>(gy, h0, h1, g, ws.gy_win.data(), nullptr, nullptr);
    fill_row_window<T>(x, h0, h1, g, ws.x_win.data(), nullptr, nullptr);
    correlate_rows(ws.gy_win.data(), ws.weights.data(), zero, gx + h0 * g.W, rows, g, ws);
    // The rows below the band fed grad_x; the weight gradient must see zeros there.
    std::fill(ws.gy_win.begin() + (g.pad + rows) * g.stride, ws.gy_win.end(), T(0));
    const Lines L{g.Wp / g.lanes, round_up(rows, kTile), g.lanes, g.stride, 1, 0, 0, 0, g.K, g.KA, g.KAp};
    weight_grad_lines(ws.gy_win.data(), ws.x_win.data(), ws.gw.data(), ws.gb.data(), L);
  }
}

template <typename T>
void row_grads(const RowLayout& g, const Workspace<T>& ws, T* gw, T* gb) {
  row_lane_sums(g, ws.gw.data(), ws.gb.data(), gw, gb);
}

namespace {
Lines packed_lines(const PackedLayout& g) {
  return {g.H, g.Wt, g.cols * g.lanes, g.lanes, g.cols * g.lanes, g.Wt * g.lanes, g.lanes, g.Wt, g.K, g.KA, g.KAp};
}
}  // namespace

template <typename T>
void packed_weights(const T* k, int64_t n, bool flip, const PackedLayout& g, Workspace<T>& ws) {
  TORCH_INTERNAL_ASSERT(g.lanes == lanes_for<T>() && n <= g.lanes && g.lanes <= kMaxLanes);
  ws.weights.resize(g.K * g.KAp * g.lanes);
  packed_weights_to(k, n, flip, g, ws.weights.data());
}

template <typename T>
void forward_packed(const T* x, int64_t n, const T* bias, T* y, const PackedLayout& g, Workspace<T>& ws,
                    const ForwardMaps<T>& maps) {
  TORCH_INTERNAL_ASSERT(ws.weights.size() == size_t(g.K * g.KAp * g.lanes) && n <= g.lanes);
  ws.x_win.resize((g.H + g.K - 1) * g.cols * g.lanes);
  fill_packed_window(x, n, g, ws.x_win.data(), maps.scale, maps.shift);
  T b[kMaxLanes] = {};
  if (bias) std::copy(bias, bias + n, b);
  ws.out.resize(g.H * g.Wt * g.lanes);
  Lines L = packed_lines(g);
  L.gelu = maps.gelu;
  correlate_lines(ws.x_win.data(), ws.weights.data(), b, ws.out.data(), L);
  store_packed(ws.out.data(), n, g, y);
}

template <typename T>
void backward_packed(const T* gy, const T* x, int64_t n, T* gx, const PackedLayout& g, Workspace<T>& ws) {
  TORCH_INTERNAL_ASSERT(ws.weights.size() == size_t(g.K * g.KAp * g.lanes) && n <= g.lanes);
  TORCH_INTERNAL_ASSERT(ws.gw.size() == size_t(g.K * g.KAp * g.lanes) && ws.gb.size() == size_t(g.lanes));
  ws.gy_win.resize((g.H + g.K - 1) * g.cols * g.lanes);
  ws.x_win.resize(ws.gy_win.size());
  fill_packed_window<T>(gy, n, g, ws.gy_win.data(), nullptr, nullptr);
  fill_packed_window<T>(x, n, g, ws.x_win.data(), nullptr, nullptr);
  const T zero[kMaxLanes] = {};
  ws.out.resize(g.H * g.Wt * g.lanes);
  const Lines L = packed_lines(g);
  correlate_lines(ws.gy_win.data(), ws.weights.data(), zero, ws.out.data(), L);
  store_packed(ws.out.data(), n, g, gx);
  weight_grad_lines(ws.gy_win.data(), ws.x_win.data(), ws.gw.data(), ws.gb.data(), L);
}

#define TXN_INSTANTIATE(T)                                                                                \
  template int64_t lanes_for<T>();                                                                         \
  template void row_weights<T>(const T*, bool, const RowLayout&, Workspace<T>&);                           \
  template void forward_rows<T>(const T*, T, T*, int64_t, int64_t, const RowLayout&, Workspace<T>&,        \
                                const ForwardMaps<T>&);                                                    \
  template void backward_rows<T>(const T*, const T*, T*, const RowLayout&, Workspace<T>&);                 \
  template void row_grads<T>(const RowLayout&, const Workspace<T>&, T*, T*);                               \
  template void packed_weights<T>(const T*, int64_t, bool, const PackedLayout&, Workspace<T>&);            \
  template void forward_packed<T>(const T*, int64_t, const T*, T*, const PackedLayout&, Workspace<T>&,      \
                                  const ForwardMaps<T>&);                                                  \
  template void backward_packed<T>(const T*, const T*, int64_t, T*, const PackedLayout&, Workspace<T>&);
TXN_INSTANTIATE(float)
TXN_INSTANTIATE(double)
#undef TXN_INSTANTIATE

}  // namespace transxnet_ops::depthwise
