// Static (multi-scale) depthwise convolution on CPU: a direct loop per (b, c) plane.
// Simple and exact; the weight/bias gradients are written as per-sample partials and summed over the batch in
// a fixed order (deterministic for any thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "dwconv/dwconv.h"

namespace transxnet_ops {
namespace {

struct Segment {
  int64_t c0, c1, k, weight_offset;  // channels [c0, c1), kernel size k, first tap in the packed weight
};

std::vector<Segment> segments_of(at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  std::vector<Segment> segs;
  int64_t c = 0, off = 0;
  for (size_t s = 0; s < split_sizes.size(); ++s) {
    segs.push_back({c, c + split_sizes[s], kernel_sizes[s], off});
    c += split_sizes[s];
    off += split_sizes[s] * kernel_sizes[s] * kernel_sizes[s];
  }
  return segs;
}

// (first tap of channel c's kernel, its size)
std::pair<int64_t, int64_t> kernel_of(const std::vector<Segment>& segs, int64_t c) {
  for (const auto& s : segs)
    if (c < s.c1) return {s.weight_offset + (c - s.c0) * s.k * s.k, s.k};
  return {0, 1};  // unreachable: the segments cover every channel
}

// out = bias + in correlated with the k x k kernel (rotated by 180 degrees if flip), zero padding k/2.
template <typename T, typename Acc>
void correlate_plane(const T* in, const T* kernel, int64_t k, bool flip, Acc bias, T* out, int64_t H, int64_t W) {
  const int64_t p = k / 2;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) {
      Acc acc = bias;
      for (int64_t i = 0; i < k; ++i) {
        const int64_t ih = h + i - p;
        if (ih < 0 || ih >= H) continue;
        for (int64_t j = 0; j < k; ++j) {
          const int64_t iw = w + j - p;
          if (iw < 0 || iw >= W) continue;
          const int64_t tap = flip ? (k - 1 - i) * k + (k - 1 - j) : i * k + j;
          acc += static_cast<Acc>(kernel[tap]) * static_cast<Acc>(in[ih * W + iw]);
        }
      }
      out[h * W + w] = static_cast<T>(acc);
    }
}

}  // namespace

at::Tensor dwconv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto segs = segments_of(split_sizes, kernel_sizes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_forward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    const scalar_t* bp = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t c = plane % C;
        const auto [tap0, k] = kernel_of(segs, c);
        correlate_plane<scalar_t, Acc>(xp + plane * H * W, wp + tap0, k, false,
                                       bp ? static_cast<Acc>(bp[c]) : Acc(0), yp + plane * H * W, H, W);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                     const at::Tensor& weight,
                                                                     at::IntArrayRef split_sizes,
                                                                     at::IntArrayRef kernel_sizes,
                                                                     bool bias_requires_grad) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t taps = weight.numel();
  const auto segs = segments_of(split_sizes, kernel_sizes);
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // per-sample partial sums: taps of grad_weight, then C of grad_bias
  auto partial = at::empty({B, taps + C}, x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dwconv2d_backward_cpu", [&] {
    using Acc = at::opmath_type<scalar_t>;
    const scalar_t* gyp = grad_y.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    Acc* pp = partial.data_ptr<Acc>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t b = plane / C, c = plane % C;
        const auto [tap0, k] = kernel_of(segs, c);
        const scalar_t* gy = gyp + plane * H * W;
        const scalar_t* xs = xp + plane * H * W;
        correlate_plane<scalar_t, Acc>(gy, wp + tap0, k, true, Acc(0), gxp + plane * H * W, H, W);
        const int64_t pad = k / 2;
        Acc* gw = pp + b * (taps + C) + tap0;
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) {
            Acc acc = 0;
            for (int64_t h = std::max<int64_t>(0, pad - i); h < std::min(H, H + pad - i); ++h)
              for (int64_t w = std::max<int64_t>(0, pad - j); w < std::min(W, W + pad - j); ++w)
                acc += static_cast<Acc>(gy[h * W + w]) * static_cast<Acc>(xs[(h + i - pad) * W + w + j - pad]);
            gw[i * k + j] = acc;
          }
        Acc sum = 0;
        for (int64_t e = 0; e < H * W; ++e) sum += static_cast<Acc>(gy[e]);
        pp[b * (taps + C) + taps + c] = sum;
      }
    });
  });
  auto total = partial.sum(0);  // fixed-order reduction over the batch
  // copies: the two outputs must not alias one buffer
  auto grad_w = total.narrow(0, 0, taps).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  auto grad_b = bias_requires_grad ? total.narrow(0, taps, C).to(x.scalar_type(), false, true)
                                   : at::empty({0}, x.options());
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
