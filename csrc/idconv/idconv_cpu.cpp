// IDConv on CPU: per-sample depthwise KxK convolution, stride 1, zero padding K/2.
//
// Work unit: a block of rows of one (b, c) plane. The forward splits planes into row blocks so that a few large
// planes still keep every thread busy; the backward gives each thread whole planes, so the weight and bias
// gradients of a plane are summed by one thread in a fixed order (deterministic, no atomics), in one sweep that
// also produces grad_x.
// Zero padding is handled by clamping each tap's row and column range (no padded copy). The hot loops work on
// acc_t rows (float for float/half/bfloat16, double for float64): half-precision input rows are converted once
// per block, and the loops are compiled for AVX-512 and AVX2 besides the build's baseline (see TXN_SIMD_CLONES).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "idconv/idconv.h"

// torch extensions build for the x86-64 baseline (SSE2); GCC clones the hot loops for newer CPUs and picks one
// at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TXN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TXN_SIMD_CLONES
#endif
// Inlined into each clone, so it is compiled for that clone's instruction set.
#define TXN_INLINE inline __attribute__((always_inline))

namespace transxnet_ops {
namespace {

// Output columns are computed in groups of `cols` (16, 32 or 64: the smallest that covers W, at most 64). A
// group's sums stay in registers over all K*K taps, as up to four independent FMA chains of one AVX-512 register
// each. Rows are padded to whole groups; the columns past W read zeros and are not stored.
struct Geom {
  int64_t H, W, K, pad;
  int64_t cols;    // columns per group
  int64_t Wp;      // W rounded up to a multiple of cols
  int64_t stride;  // width of a padded window row: pad zeros, W values, zeros up to Wp + 2 * pad

  Geom(int64_t H_, int64_t W_, int64_t K_) : H(H_), W(W_), K(K_), pad(K_ / 2) {
    cols = W <= 16 ? 16 : W <= 32 ? 32 : 64;
    Wp = (W + cols - 1) / cols * cols;
    stride = Wp + 2 * pad;
  }
};

// Kernel rows i whose input row h + i - pad lies inside [0, H); the others only read zero padding.
TXN_INLINE void tap_rows(const Geom& g, int64_t h, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, g.pad - h);
  hi = std::min<int64_t>(g.K, g.H + g.pad - h);
}

// out[0:Wp] = bias + sum_{i,j} k[i,j] * x[h+i-pad, w+j-pad].
// win is a padded window of plane rows from win_row0 on (see load_window): x[r, c] is at
// win[(r - win_row0) * stride + pad + c], so tap j of output column w reads window column w + j.
template <typename T, int64_t Cols>
TXN_INLINE void correlate_row_impl(T* __restrict out, const T* __restrict win, int64_t win_row0,
                                   const T* __restrict k, T bias, int64_t h, const Geom& g) {
  int64_t i0, i1;
  tap_rows(g, h, i0, i1);
  for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
    T acc[Cols];
    for (int64_t l = 0; l < Cols; ++l) acc[l] = bias;
    for (int64_t i = i0; i < i1; ++i) {
      const T* src = win + (h + i - g.pad - win_row0) * g.stride + w0;
      for (int64_t j = 0; j < g.K; ++j) {
        const T kij = k[i * g.K + j];
#pragma omp simd
        for (int64_t l = 0; l < Cols; ++l) acc[l] += kij * src[j + l];
      }
    }
    for (int64_t l = 0; l < Cols; ++l) out[w0 + l] = acc[l];
  }
}

// Weight and bias gradient contributions of output rows [h0, h1), as `cols` partial sums per tap (reduced once
// per plane): gw_lanes[(i*K + j)*cols + l] += sum_h sum_{w = l mod cols} gy[h, w] * x[h+i-pad, w+j-pad], and
// gb_lanes[l] likewise sums gy. gy_win and x_win are padded windows (as in correlate_row_impl) from win_row0 on;
// gy is zero past W, so the padded columns add nothing.
template <typename T, int64_t Cols>
TXN_INLINE void weight_grad_block_impl(T* __restrict gw_lanes, T* __restrict gb_lanes, const T* __restrict gy_win,
                                       const T* __restrict x_win, int64_t win_row0, int64_t h0, int64_t h1,
                                       const Geom& g) {
  auto gy_row = [&](int64_t h) { return gy_win + (h - win_row0) * g.stride + g.pad; };
  for (int64_t h = h0; h < h1; ++h) {
    const T* gy = gy_row(h);
    for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
#pragma omp simd
      for (int64_t l = 0; l < Cols; ++l) gb_lanes[l] += gy[w0 + l];
    }
  }
  for (int64_t i = 0; i < g.K; ++i) {
    // output rows of the block whose tap-i input row lies inside the plane
    const int64_t ha = std::max(h0, g.pad - i), hb = std::min(h1, g.H + g.pad - i);
    for (int64_t j = 0; j < g.K; ++j) {
      T* lanes = gw_lanes + (i * g.K + j) * Cols;
      T acc[Cols];
      for (int64_t l = 0; l < Cols; ++l) acc[l] = lanes[l];
      for (int64_t h = ha; h < hb; ++h) {
        const T* gy = gy_row(h);
        const T* src = x_win + (h + i - g.pad - win_row0) * g.stride + j;
        for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
#pragma omp simd
          for (int64_t l = 0; l < Cols; ++l) acc[l] += gy[w0 + l] * src[w0 + l];
        }
      }
      for (int64_t l = 0; l < Cols; ++l) lanes[l] = acc[l];
    }
  }
}

template <typename T>
TXN_SIMD_CLONES void correlate_row(T* out, const T* win, int64_t win_row0, const T* k, T bias, int64_t h,
                                   const Geom& g) {
  switch (g.cols) {
    case 16: return correlate_row_impl<T, 16>(out, win, win_row0, k, bias, h, g);
    case 32: return correlate_row_impl<T, 32>(out, win, win_row0, k, bias, h, g);
    default: return correlate_row_impl<T, 64>(out, win, win_row0, k, bias, h, g);
  }
}

template <typename T>
TXN_SIMD_CLONES void weight_grad_block(T* gw_lanes, T* gb_lanes, const T* gy_win, const T* x_win, int64_t win_row0,
                                       int64_t h0, int64_t h1, const Geom& g) {
  switch (g.cols) {
    case 16: return weight_grad_block_impl<T, 16>(gw_lanes, gb_lanes, gy_win, x_win, win_row0, h0, h1, g);
    case 32: return weight_grad_block_impl<T, 32>(gw_lanes, gb_lanes, gy_win, x_win, win_row0, h0, h1, g);
    default: return weight_grad_block_impl<T, 64>(gw_lanes, gb_lanes, gy_win, x_win, win_row0, h0, h1, g);
  }
}

// Plane rows [r0, r1) as a zero-padded acc_t window, stride g.stride: value (r, c) at (r - r0) * stride + pad + c.
// It is a few rows of one plane per thread (in cache), never a padded copy of the tensor.
template <typename scalar_t, typename acc_t>
void load_window(const scalar_t* plane, int64_t r0, int64_t r1, const Geom& g, std::vector<acc_t>& win) {
  win.assign((r1 - r0) * g.stride, acc_t(0));
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* src = plane + r * g.W;
    acc_t* dst = win.data() + (r - r0) * g.stride + g.pad;
    for (int64_t c = 0; c < g.W; ++c) dst[c] = static_cast<acc_t>(src[c]);
  }
}

// Plane rows [r0, r1) that output rows [h0, h1) read.
void input_window(const Geom& g, int64_t h0, int64_t h1, int64_t& r0, int64_t& r1) {
  r0 = std::max<int64_t>(0, h0 - g.pad);
  r1 = std::min<int64_t>(g.H, h1 + g.pad);
}

// Output rows per block: the block's input window (rows + K - 1 padded rows) of ~16K elements stays in L2.
int64_t rows_per_block(const Geom& g) {
  return std::clamp<int64_t>(16384 / g.stride - (g.K - 1), 1, g.H);
}

template <typename scalar_t, typename acc_t>
void store(scalar_t* dst, const acc_t* src, int64_t n) {
  for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<scalar_t>(src[e]);
}

// Per-thread buffers.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> row, x_win, gy_win, k, gw_lanes, gb_lanes;
  explicit Scratch(const Geom& g)
      : row(g.Wp), k(g.K * g.K), gw_lanes(g.K * g.K * g.cols), gb_lanes(g.cols) {}
};

// Output rows [h0, h1) of one plane.
template <typename scalar_t, typename acc_t>
void forward_block(const scalar_t* x, const scalar_t* w, acc_t bias, scalar_t* y, int64_t h0, int64_t h1,
                   const Geom& g, Scratch<acc_t>& s) {
  int64_t r0, r1;
  input_window(g, h0, h1, r0, r1);
  load_window(x, r0, r1, g, s.x_win);
  for (int64_t t = 0; t < g.K * g.K; ++t) s.k[t] = static_cast<acc_t>(w[t]);
  for (int64_t h = h0; h < h1; ++h) {
    correlate_row(s.row.data(), s.x_win.data(), r0, s.k.data(), bias, h, g);
    store(y + h * g.W, s.row.data(), g.W);
  }
}

// All three gradients of one plane in one sweep over its rows. grad_x is the correlation of grad_y with the
// kernel flipped in both axes: gx[r,c] = sum_{i,j} k[K-1-i, K-1-j] * gy[r+i-pad, c+j-pad].
template <typename scalar_t, typename acc_t>
void backward_plane(const scalar_t* gy, const scalar_t* x, const scalar_t* w, scalar_t* gx, scalar_t* gw,
                    scalar_t* gb, const Geom& g, Scratch<acc_t>& s) {
  const int64_t KK = g.K * g.K;
  for (int64_t t = 0; t < KK; ++t) s.k[t] = static_cast<acc_t>(w[KK - 1 - t]);
  std::fill(s.gw_lanes.begin(), s.gw_lanes.end(), acc_t(0));
  std::fill(s.gb_lanes.begin(), s.gb_lanes.end(), acc_t(0));
  const int64_t rows = rows_per_block(g);
  for (int64_t h0 = 0; h0 < g.H; h0 += rows) {
    const int64_t h1 = std::min(g.H, h0 + rows);
    int64_t r0, r1;
    input_window(g, h0, h1, r0, r1);
    load_window(gy, r0, r1, g, s.gy_win);
    load_window(x, r0, r1, g, s.x_win);
    for (int64_t h = h0; h < h1; ++h) {
      correlate_row(s.row.data(), s.gy_win.data(), r0, s.k.data(), acc_t(0), h, g);
      store(gx + h * g.W, s.row.data(), g.W);
    }
    weight_grad_block(s.gw_lanes.data(), s.gb_lanes.data(), s.gy_win.data(), s.x_win.data(), r0, h0, h1, g);
  }
  // Fixed-order reduction of the lanes: deterministic.
  auto lanes_sum = [&](const acc_t* lanes) { return static_cast<scalar_t>(std::accumulate(lanes, lanes + g.cols, acc_t(0))); };
  for (int64_t t = 0; t < KK; ++t) gw[t] = lanes_sum(s.gw_lanes.data() + t * g.cols);
  *gb = lanes_sum(s.gb_lanes.data());
}

Geom geom_of(const at::Tensor& x, const at::Tensor& weight) {
  return Geom(x.size(2), x.size(3), weight.size(2));
}

}  // namespace

at::Tensor idconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const Geom g = geom_of(x, weight);
  const int64_t planes = x.size(0) * x.size(1), HW = g.H * g.W, KK = g.K * g.K;
  if (y.numel() == 0) return y;
  const int64_t rows = rows_per_block(g), blocks = (g.H + rows - 1) / rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "idconv_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(g);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / blocks, h0 = (task % blocks) * rows;
        const acc_t b = bp ? static_cast<acc_t>(bp[n]) : acc_t(0);
        forward_block(xp + n * HW, wp + n * KK, b, yp + n * HW, h0, std::min(g.H, h0 + rows), g, s);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight) {
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  auto grad_b = at::empty({x.size(0), x.size(1)}, x.options());
  const Geom g = geom_of(x, weight);
  const int64_t planes = x.size(0) * x.size(1), HW = g.H * g.W, KK = g.K * g.K;
  if (HW == 0) {  // no outputs: the weight and bias gradients are empty sums
    grad_w.zero_();
    grad_b.zero_();
    return {grad_x, grad_w, grad_b};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "idconv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gyp = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = grad_b.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> s(g);
      for (int64_t n = begin; n < end; ++n) {
        backward_plane(gyp + n * HW, xp + n * HW, wp + n * KK, gxp + n * HW, gwp + n * KK, gbp + n, g, s);
      }
    });
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
