// IDConv on CPU: per-sample depthwise KxK convolution, stride 1, zero padding K/2.
//
// Work unit: a block of output rows of one (b, c) plane. The forward splits planes into row blocks, so a few
// large planes still keep every thread busy. The backward gives each thread whole planes and sweeps each plane
// once, producing grad_x, grad_weight and grad_bias together; a plane's weight and bias gradients are summed by
// one thread in a fixed order (deterministic, no atomics).
//
// A block reads its input rows (plus K/2 rows above and below) into a small per-thread window in the
// accumulation type (float for float/half/bfloat16, double for float64), with zeros around the plane: the zero
// padding costs no branches and no padded copy of the tensor. Output columns are computed in register-resident
// groups; the hot loops are compiled for AVX-512 and AVX2 besides the build's baseline (TXN_SIMD_CLONES).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "idconv/idconv.h"

// torch extensions are built for the x86-64 baseline (SSE2); GCC also compiles these functions for newer CPUs
// and picks the best one when the library is loaded.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TXN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TXN_SIMD_CLONES
#endif
// Inlined into each clone, so compiled for that clone's instruction set.
#define TXN_INLINE inline __attribute__((always_inline))

namespace transxnet_ops {
namespace {

// Output columns are computed in groups of `cols` (16, 32 or 64, the smallest covering W) and output rows in
// groups of 64 / cols, so a group keeps 64 sums in registers (4 AVX-512 registers of floats: independent FMA
// chains). Rows and blocks are padded to whole groups; the padded outputs read zeros and are not stored.
// (Clamping each tap's column range instead, with no window, gives short odd-length loops whose scalar
// remainders cost more than their FMAs: that version ran 4x slower at K = 7, W = 56.)
struct Geom {
  int64_t H, W, K, pad;
  int64_t cols;        // columns per group
  int64_t group_rows;  // rows per group
  int64_t Wp;          // W rounded up to a multiple of cols
  int64_t stride;      // row length of a window: pad zeros, W values, zeros up to Wp + 2 * pad

  Geom(int64_t H_, int64_t W_, int64_t K_) : H(H_), W(W_), K(K_), pad(K_ / 2) {
    cols = W <= 16 ? 16 : W <= 32 ? 32 : 64;
    group_rows = 64 / cols;
    Wp = (W + cols - 1) / cols * cols;
    stride = Wp + 2 * pad;
  }
  int64_t padded_rows(int64_t rows) const { return (rows + group_rows - 1) / group_rows * group_rows; }
};

// The window of output rows [h0, h1) holds plane rows h0 - pad .. h0 + padded_rows(h1 - h0) + pad - 1, zero
// outside the plane and beyond h1 + pad: input (r, c) is at win[(r - h0 + pad) * stride + pad + c], and tap (i, j)
// of output (h, w) reads win[(h - h0 + i) * stride + w + j].

// out[row + r][w] = bias + sum_{i,j} k[i,j] * x[h0+row+r+i-pad, w+j-pad] for the Rows rows of one group;
// out rows are Wp apart.
template <typename T, int64_t Cols, int64_t Rows>
TXN_INLINE void correlate_group(T* __restrict out, const T* __restrict win, const T* __restrict k, T bias,
                                int64_t row, const Geom& g) {
  for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
    T acc[Rows][Cols];
    for (int64_t r = 0; r < Rows; ++r)
      for (int64_t l = 0; l < Cols; ++l) acc[r][l] = bias;
    for (int64_t i = 0; i < g.K; ++i) {
      const T* src = win + (row + i) * g.stride + w0;
      for (int64_t j = 0; j < g.K; ++j) {
        const T kij = k[i * g.K + j];
        for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
          for (int64_t l = 0; l < Cols; ++l) acc[r][l] += kij * src[r * g.stride + j + l];
        }
      }
    }
    for (int64_t r = 0; r < Rows; ++r)
      for (int64_t l = 0; l < Cols; ++l) out[(row + r) * g.Wp + w0 + l] = acc[r][l];
  }
}

template <typename T, int64_t Cols>
TXN_INLINE void correlate_block_impl(T* out, const T* win, const T* k, T bias, int64_t nrows, const Geom& g) {
  constexpr int64_t Rows = 64 / Cols;
  for (int64_t row = 0; row < nrows; row += Rows) correlate_group<T, Cols, Rows>(out, win, k, bias, row, g);
}

// Adds the block's weight and bias gradients as `cols` partial sums (lanes) per tap, so the hot loop has no
// horizontal sums; the caller sums the lanes once per plane:
//   gw_lanes[(i*K + j)*cols + l] += sum_h sum_{w = l mod cols} gy[h,w] * x[h+i-pad, w+j-pad]
//   gb_lanes[l]                  += sum_h sum_{w = l mod cols} gy[h,w]
// gy_win and x_win are windows of the block; gy_win must be zero past its nrows output rows and past column W,
// so the padded outputs add nothing.
template <typename T, int64_t Cols>
TXN_INLINE void weight_grad_block_impl(T* __restrict gw_lanes, T* __restrict gb_lanes, const T* __restrict gy_win,
                                       const T* __restrict x_win, int64_t nrows, const Geom& g) {
  constexpr int64_t Rows = 64 / Cols;
  const int64_t prows = g.padded_rows(nrows);
  const T* gy_rows = gy_win + g.pad * g.stride + g.pad;  // output row `row` of gy at gy_rows + row * stride
  for (int64_t row = 0; row < prows; ++row) {
    for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
#pragma omp simd
      for (int64_t l = 0; l < Cols; ++l) gb_lanes[l] += gy_rows[row * g.stride + w0 + l];
    }
  }
  for (int64_t i = 0; i < g.K; ++i) {
    for (int64_t j = 0; j < g.K; ++j) {
      T acc[Rows][Cols] = {};  // the rows of a group go to separate sums: independent FMA chains
      for (int64_t row = 0; row < prows; row += Rows) {
        const T* gy = gy_rows + row * g.stride;
        const T* src = x_win + (row + i) * g.stride + j;
        for (int64_t w0 = 0; w0 < g.Wp; w0 += Cols) {
          for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
            for (int64_t l = 0; l < Cols; ++l) acc[r][l] += gy[r * g.stride + w0 + l] * src[r * g.stride + w0 + l];
          }
        }
      }
      T* lanes = gw_lanes + (i * g.K + j) * Cols;
      for (int64_t r = 0; r < Rows; ++r) {
#pragma omp simd
        for (int64_t l = 0; l < Cols; ++l) lanes[l] += acc[r][l];
      }
    }
  }
}

template <typename T>
TXN_SIMD_CLONES void correlate_block(T* out, const T* win, const T* k, T bias, int64_t nrows, const Geom& g) {
  switch (g.cols) {
    case 16: return correlate_block_impl<T, 16>(out, win, k, bias, nrows, g);
    case 32: return correlate_block_impl<T, 32>(out, win, k, bias, nrows, g);
    default: return correlate_block_impl<T, 64>(out, win, k, bias, nrows, g);
  }
}

template <typename T>
TXN_SIMD_CLONES void weight_grad_block(T* gw_lanes, T* gb_lanes, const T* gy_win, const T* x_win, int64_t nrows,
                                       const Geom& g) {
  switch (g.cols) {
    case 16: return weight_grad_block_impl<T, 16>(gw_lanes, gb_lanes, gy_win, x_win, nrows, g);
    case 32: return weight_grad_block_impl<T, 32>(gw_lanes, gb_lanes, gy_win, x_win, nrows, g);
    default: return weight_grad_block_impl<T, 64>(gw_lanes, gb_lanes, gy_win, x_win, nrows, g);
  }
}

// The window of output rows [h0, h1) of a plane (layout above), converted to acc_t.
template <typename scalar_t, typename acc_t>
void load_window(const scalar_t* plane, int64_t h0, int64_t h1, const Geom& g, std::vector<acc_t>& win) {
  win.assign((g.padded_rows(h1 - h0) + 2 * g.pad) * g.stride, acc_t(0));
  const int64_t r0 = std::max<int64_t>(0, h0 - g.pad), r1 = std::min<int64_t>(g.H, h1 + g.pad);
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* src = plane + r * g.W;
    acc_t* dst = win.data() + (r - h0 + g.pad) * g.stride + g.pad;
    for (int64_t c = 0; c < g.W; ++c) dst[c] = static_cast<acc_t>(src[c]);
  }
}

// Output rows per block: a window of ~16K elements stays in L2.
int64_t rows_per_block(const Geom& g) {
  return std::clamp<int64_t>(16384 / g.stride - 2 * g.pad, 1, g.H);
}

// Rows [h0, h1) of out (row length Wp) into plane rows of length W.
template <typename scalar_t, typename acc_t>
void store_rows(scalar_t* plane, const acc_t* out, int64_t h0, int64_t h1, const Geom& g) {
  for (int64_t h = h0; h < h1; ++h)
    for (int64_t c = 0; c < g.W; ++c) plane[h * g.W + c] = static_cast<scalar_t>(out[(h - h0) * g.Wp + c]);
}

// Per-thread buffers.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> out, x_win, gy_win, k, gw_lanes, gb_lanes;
  explicit Scratch(const Geom& g)
      : out(g.padded_rows(rows_per_block(g)) * g.Wp), k(g.K * g.K), gw_lanes(g.K * g.K * g.cols), gb_lanes(g.cols) {}
};

// Output rows [h0, h1) of one plane.
template <typename scalar_t, typename acc_t>
void forward_block(const scalar_t* x, const scalar_t* w, acc_t bias, scalar_t* y, int64_t h0, int64_t h1,
                   const Geom& g, Scratch<acc_t>& s) {
  load_window(x, h0, h1, g, s.x_win);
  for (int64_t t = 0; t < g.K * g.K; ++t) s.k[t] = static_cast<acc_t>(w[t]);
  correlate_block(s.out.data(), s.x_win.data(), s.k.data(), bias, h1 - h0, g);
  store_rows(y, s.out.data(), h0, h1, g);
}

// All three gradients of one plane in one sweep over its row blocks. grad_x is the correlation of grad_y with
// the kernel flipped in both axes: gx[r,c] = sum_{i,j} k[K-1-i, K-1-j] * gy[r+i-pad, c+j-pad].
template <typename scalar_t, typename acc_t>
void backward_plane(const scalar_t* gy, const scalar_t* x, const scalar_t* w, scalar_t* gx, scalar_t* gw,
                    scalar_t* gb, const Geom& g, Scratch<acc_t>& s) {
  const int64_t KK = g.K * g.K;
  for (int64_t t = 0; t < KK; ++t) s.k[t] = static_cast<acc_t>(w[KK - 1 - t]);
  std::fill(s.gw_lanes.begin(), s.gw_lanes.end(), acc_t(0));
  std::fill(s.gb_lanes.begin(), s.gb_lanes.end(), acc_t(0));
  const int64_t rows = rows_per_block(g);
  for (int64_t h0 = 0; h0 < g.H; h0 += rows) {
    const int64_t h1 = std::min(g.H, h0 + rows), nrows = h1 - h0;
    load_window(gy, h0, h1, g, s.gy_win);
    load_window(x, h0, h1, g, s.x_win);
    correlate_block(s.out.data(), s.gy_win.data(), s.k.data(), acc_t(0), nrows, g);
    store_rows(gx, s.out.data(), h0, h1, g);
    // grad_x needed grad_y's rows past the block; the weight gradient must not see them.
    std::fill(s.gy_win.begin() + (nrows + g.pad) * g.stride, s.gy_win.end(), acc_t(0));
    weight_grad_block(s.gw_lanes.data(), s.gb_lanes.data(), s.gy_win.data(), s.x_win.data(), nrows, g);
  }
  // Sum each tap's lanes in a fixed order (deterministic).
  auto lanes_sum = [&](const acc_t* lanes) {
    return static_cast<scalar_t>(std::accumulate(lanes, lanes + g.cols, acc_t(0)));
  };
  for (int64_t t = 0; t < KK; ++t) gw[t] = lanes_sum(s.gw_lanes.data() + t * g.cols);
  *gb = lanes_sum(s.gb_lanes.data());
}

Geom geom_of(const at::Tensor& x, const at::Tensor& weight) {
  return Geom(x.size(2), x.size(3), weight.size(2));
}

}  // namespace

at::Tensor idconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  const Geom g = geom_of(x, weight);
  const int64_t planes = x.size(0) * x.size(1), HW = g.H * g.W, KK = g.K * g.K;
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
