// IDConv on CPU: one (b, c) plane per task, rows accumulated in an acc_t buffer (float for half types,
// double for float64). Zero padding is handled by clamping each tap's column range, so no padded copy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "idconv/idconv.h"

namespace transxnet_ops {
namespace {

struct Plane {
  int64_t H, W, K, pad;
};

// Output columns ow for which input column ow + j - pad lies in [0, W).
inline void tap_columns(const Plane& p, int64_t j, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, p.pad - j);
  hi = std::min<int64_t>(p.W, p.W + p.pad - j);
}

template <typename scalar_t, typename acc_t>
void forward_plane(const scalar_t* x, const scalar_t* w, acc_t bias, scalar_t* y, const Plane& p,
                   std::vector<acc_t>& row) {
  for (int64_t h = 0; h < p.H; ++h) {
    std::fill(row.begin(), row.end(), bias);
    for (int64_t i = 0; i < p.K; ++i) {
      const int64_t ih = h + i - p.pad;
      if (ih < 0 || ih >= p.H) continue;
      const scalar_t* x_row = x + ih * p.W;
      for (int64_t j = 0; j < p.K; ++j) {
        const acc_t wij = static_cast<acc_t>(w[i * p.K + j]);
        int64_t lo, hi;
        tap_columns(p, j, lo, hi);
        for (int64_t ow = lo; ow < hi; ++ow) row[ow] += wij * static_cast<acc_t>(x_row[ow + j - p.pad]);
      }
    }
    for (int64_t ow = 0; ow < p.W; ++ow) y[h * p.W + ow] = static_cast<scalar_t>(row[ow]);
  }
}

// grad_x = correlation of grad_y with the flipped kernel; grad_w[i,j] = sum grad_y * shifted x;
// grad_b = sum grad_y. All three in one sweep over the plane.
template <typename scalar_t, typename acc_t>
void backward_plane(const scalar_t* gy, const scalar_t* x, const scalar_t* w, scalar_t* gx, scalar_t* gw,
                    scalar_t* gb, const Plane& p, std::vector<acc_t>& row, std::vector<acc_t>& gw_acc) {
  std::fill(gw_acc.begin(), gw_acc.end(), acc_t(0));
  acc_t gb_acc = 0;
  for (int64_t r = 0; r < p.H; ++r) {
    // grad_x row r: output rows h = r - i + pad contribute through tap (i, j).
    std::fill(row.begin(), row.end(), acc_t(0));
    for (int64_t i = 0; i < p.K; ++i) {
      const int64_t h = r - i + p.pad;
      if (h < 0 || h >= p.H) continue;
      const scalar_t* gy_row = gy + h * p.W;
      for (int64_t j = 0; j < p.K; ++j) {
        const acc_t wij = static_cast<acc_t>(w[i * p.K + j]);
        // gx[r][c] += w[i][j] * gy[h][c - j + pad] for c - j + pad in [0, W)
        const int64_t lo = std::max<int64_t>(0, j - p.pad), hi = std::min<int64_t>(p.W, p.W + j - p.pad);
        for (int64_t c = lo; c < hi; ++c) row[c] += wij * static_cast<acc_t>(gy_row[c - j + p.pad]);
      }
    }
    for (int64_t c = 0; c < p.W; ++c) gx[r * p.W + c] = static_cast<scalar_t>(row[c]);

    // grad_w and grad_b from output row r.
    const scalar_t* gy_row = gy + r * p.W;
    for (int64_t ow = 0; ow < p.W; ++ow) gb_acc += static_cast<acc_t>(gy_row[ow]);
    for (int64_t i = 0; i < p.K; ++i) {
      const int64_t ih = r + i - p.pad;
      if (ih < 0 || ih >= p.H) continue;
      const scalar_t* x_row = x + ih * p.W;
      for (int64_t j = 0; j < p.K; ++j) {
        int64_t lo, hi;
        tap_columns(p, j, lo, hi);
        acc_t sum = 0;
        for (int64_t ow = lo; ow < hi; ++ow) sum += static_cast<acc_t>(gy_row[ow]) * static_cast<acc_t>(x_row[ow + j - p.pad]);
        gw_acc[i * p.K + j] += sum;
      }
    }
  }
  for (int64_t t = 0; t < p.K * p.K; ++t) gw[t] = static_cast<scalar_t>(gw_acc[t]);
  *gb = static_cast<scalar_t>(gb_acc);
}

}  // namespace

at::Tensor idconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t planes = x.size(0) * x.size(1);
  const Plane p{x.size(2), x.size(3), weight.size(2), weight.size(2) / 2};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "idconv_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(p.W);
      for (int64_t n = begin; n < end; ++n) {
        const acc_t b = bp ? static_cast<acc_t>(bp[n]) : acc_t(0);
        forward_plane<scalar_t, acc_t>(xp + n * p.H * p.W, wp + n * p.K * p.K, b, yp + n * p.H * p.W, p, row);
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
  const int64_t planes = x.size(0) * x.size(1);
  const Plane p{x.size(2), x.size(3), weight.size(2), weight.size(2) / 2};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "idconv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    scalar_t* gwp = grad_w.data_ptr<scalar_t>();
    scalar_t* gbp = grad_b.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(p.W), gw_acc(p.K * p.K);
      for (int64_t n = begin; n < end; ++n) {
        const int64_t xo = n * p.H * p.W, wo = n * p.K * p.K;
        backward_plane<scalar_t, acc_t>(gyp + xo, xp + xo, wp + wo, gxp + xo, gwp + wo, gbp + n, p, row, gw_acc);
      }
    });
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
