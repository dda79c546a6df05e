// Static (multi-scale) depthwise convolution on CPU, on the depthwise kernel family (depthwise/depthwise_cpu.h):
// every channel has one kernel, shared by the batch; each channel segment has its own kernel size.
//
// Work units: one channel (row layout, or the 3 x 3 strip kernels) or up to `lanes` consecutive channels of one
// segment (packed layout).
// Forward tasks are (sample, unit). Backward tasks are (unit, batch chunk): a task sweeps its planes sample by
// sample, writing grad_x and adding the weight and bias gradients to per-lane accumulators, which it sums into
// one partial per chunk; the partials are summed over the chunks in order afterwards. The chunk count depends on
// the shape only, so the gradients are the same for any thread count (and no atomics). float16 / bfloat16 run in
// float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "depthwise/depthwise3x3_cpu.h"
#include "depthwise/depthwise_cpu.h"
#include "dwconv/dwconv.h"

namespace transxnet_ops {
namespace {

using depthwise::Grads3x3;
using depthwise::PackedLayout;
using depthwise::RowLayout;
using depthwise::Workspace;

enum class Path { kRows, kPacked, kStrip3x3 };

struct Unit {
  int64_t c0, n, K, tap0;  // channels [c0, c0 + n), kernel size, first tap of channel c0 in the packed weight
  Path path;
};

std::vector<Unit> units_of(at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes, int64_t W, int64_t lanes,
                           int64_t strip3x3_width) {
  std::vector<Unit> units;
  int64_t c = 0, tap = 0;
  for (size_t s = 0; s < split_sizes.size(); ++s) {
    const int64_t K = kernel_sizes[s], KK = K * K;
    const Path path = K == 3 && W >= strip3x3_width ? Path::kStrip3x3
                      : depthwise::use_packed(W, lanes)  ? Path::kPacked
                                                         : Path::kRows;
    const int64_t step = path == Path::kPacked ? lanes : 1;
    for (int64_t c0 = 0; c0 < split_sizes[s]; c0 += step) {
      const int64_t n = std::min(step, split_sizes[s] - c0);
      units.push_back({c + c0, n, K, tap + c0 * KK, path});
    }
    c += split_sizes[s];
    tap += split_sizes[s] * KK;
  }
  return units;
}

// Relative cost of one sample of a unit.
bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

double unit_cost(const Unit& u, int64_t HW) { return static_cast<double>(u.n * HW * (u.K * u.K + 4)); }

// maps: per channel (ForwardMaps::at picks a unit's first channel).
template <typename T>
void forward(const T* x, const T* w, const T* bias, T* y, int64_t B, int64_t C, int64_t H, int64_t W,
             const std::vector<Unit>& units, const depthwise::ForwardMaps<T>& maps) {
  const int64_t HW = H * W, lanes = depthwise::lanes_for<T>(), U = static_cast<int64_t>(units.size());
  // Tasks unit-major, so that a thread's consecutive tasks share their unit's weights.
  depthwise::parallel_by_cost(
      U * B, [&](int64_t t) { return unit_cost(units[t / B], HW); },
      [&](int64_t begin, int64_t end) {
        Workspace<T> ws;
        for (int64_t task = begin; task < end; ++task) {
          const Unit& u = units[task / B];
          const bool new_unit = task == begin || task % B == 0;
          const int64_t at = ((task % B) * C + u.c0) * HW;
          const T* b = bias ? bias + u.c0 : nullptr;
          const auto unit_maps = maps.at(u.c0);
          if (u.path == Path::kStrip3x3) {
            depthwise::forward3x3(x + at, w + u.tap0, b ? *b : T(0), y + at, H, W, unit_maps);
          } else if (u.path == Path::kPacked) {
            const PackedLayout g(H, W, u.K, lanes);
            if (new_unit) depthwise::packed_weights(w + u.tap0, u.n, false, g, ws);
            depthwise::forward_packed(x + at, u.n, b, y + at, g, ws, unit_maps);
          } else {
            const RowLayout g(H, W, u.K, lanes);
            if (new_unit) depthwise::row_weights(w + u.tap0, false, g, ws);
            for (int64_t h0 = 0; h0 < H; h0 += g.band)
              depthwise::forward_rows(x + at, b ? *b : T(0), y + at, h0, std::min(H, h0 + g.band), g, ws,
                                      unit_maps);
          }
        }
      });
}

// Batch chunks of the weight-gradient reduction: enough (unit, chunk) tasks to balance a few threads, from the
// shape alone.
int64_t batch_chunks(int64_t B, int64_t units) {
  constexpr int64_t kWantTasks = 32;
  return std::clamp<int64_t>((kWantTasks + units - 1) / units, 1, std::max<int64_t>(B, 1));
}

// grad_x, and the weight and bias gradients of batch chunk k into partial[k] (taps, then C bias entries).
template <typename T>
void backward(const T* gy, const T* x, const T* w, T* gx, T* partial, int64_t B, int64_t C, int64_t H, int64_t W,
              int64_t taps, const std::vector<Unit>& units, int64_t chunks) {
  const int64_t HW = H * W, lanes = depthwise::lanes_for<T>(), U = static_cast<int64_t>(units.size());
  const int64_t per_chunk = (B + chunks - 1) / chunks;
  depthwise::parallel_by_cost(
      U * chunks, [&](int64_t t) { return unit_cost(units[t / chunks], HW) * per_chunk; },
      [&](int64_t begin, int64_t end) {
        Workspace<T> ws;
        Grads3x3<T> strip;
        for (int64_t task = begin; task < end; ++task) {
          const Unit& u = units[task / chunks];
          const int64_t k = task % chunks, b0 = k * per_chunk, b1 = std::min(B, b0 + per_chunk), KK = u.K * u.K;
          T* gw = partial + k * (taps + C) + u.tap0;
          T* gb = partial + k * (taps + C) + taps + u.c0;
          if (u.path == Path::kStrip3x3) {
            strip.zero();
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t at = (b * C + u.c0) * HW;
              depthwise::backward3x3(gy + at, x + at, w + u.tap0, gx + at, H, W, strip);
            }
            depthwise::grads3x3(strip, gw, gb);
          } else if (u.path == Path::kPacked) {
            const PackedLayout g(H, W, u.K, lanes);
            depthwise::packed_weights(w + u.tap0, u.n, true, g, ws);
            ws.zero_grads(u.K, g.KAp, lanes);
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t at = (b * C + u.c0) * HW;
              depthwise::backward_packed(gy + at, x + at, u.n, gx + at, g, ws);
            }
            for (int64_t l = 0; l < u.n; ++l) depthwise::packed_grads(g, ws, l, gw + l * KK, gb + l);
          } else {
            const RowLayout g(H, W, u.K, lanes);
            depthwise::row_weights(w + u.tap0, true, g, ws);
            ws.zero_grads(u.K, g.KAp, lanes);
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t at = (b * C + u.c0) * HW;
              depthwise::backward_rows(gy + at, x + at, gx + at, g, ws);
            }
            depthwise::row_grads(g, ws, gw, gb);
          }
        }
      });
}

}  // namespace

at::Tensor dwconv2d_inference_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& in_scale, const std::optional<at::Tensor>& in_shift,
                                  at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes, bool gelu) {
  if (is_reduced_float(x)) {
    auto to_float = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
      if (!t.has_value()) return std::nullopt;
      return t->to(at::kFloat);
    };
    return dwconv2d_inference_cpu(x.to(at::kFloat), weight.to(at::kFloat), to_float(bias), to_float(in_scale),
                                  to_float(in_shift), split_sizes, kernel_sizes, gelu)
        .to(x.scalar_type());
  }
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv2d_forward_cpu", [&] {
    const auto units = units_of(split_sizes, kernel_sizes, x.size(3), depthwise::lanes_for<scalar_t>(),
                                  depthwise::strip3x3_min_width<scalar_t>());
    const depthwise::ForwardMaps<scalar_t> maps{
        in_scale.has_value() ? in_scale->const_data_ptr<scalar_t>() : nullptr,
        in_shift.has_value() ? in_shift->const_data_ptr<scalar_t>() : nullptr, gelu};
    forward(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(),
            x.size(0), x.size(1), x.size(2), x.size(3), units, maps);
  });
  return y;
}

at::Tensor dwconv2d_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  return dwconv2d_inference_cpu(x, weight, bias, std::nullopt, std::nullopt, split_sizes, kernel_sizes, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                     const at::Tensor& weight,
                                                                     at::IntArrayRef split_sizes,
                                                                     at::IntArrayRef kernel_sizes,
                                                                     bool bias_requires_grad) {
  if (is_reduced_float(x)) {
    auto [gx, gw, gb] = dwconv2d_backward_cpu(grad_y.to(at::kFloat), x.to(at::kFloat), weight.to(at::kFloat),
                                              split_sizes, kernel_sizes, bias_requires_grad);
    return {gx.to(x.scalar_type()), gw.to(x.scalar_type()), gb.to(x.scalar_type())};
  }
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), taps = weight.numel();
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor total;  // weight taps, then C bias entries, summed over the batch
  if (x.numel() == 0) {
    total = at::zeros({taps + C}, x.options());
  } else {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dwconv2d_backward_cpu", [&] {
      const auto units = units_of(split_sizes, kernel_sizes, W, depthwise::lanes_for<scalar_t>(),
                                    depthwise::strip3x3_min_width<scalar_t>());
      const int64_t chunks = batch_chunks(B, static_cast<int64_t>(units.size()));
      auto partial = at::empty({chunks, taps + C}, x.options());
      scalar_t* pp = partial.mutable_data_ptr<scalar_t>();
      backward(grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
               grad_x.mutable_data_ptr<scalar_t>(), pp, B, C, H, W, taps, units, chunks);
      for (int64_t k = 1; k < chunks; ++k)  // fixed order
        for (int64_t e = 0; e < taps + C; ++e) pp[e] += pp[k * (taps + C) + e];
      total = partial[0];
    });
  }
  // copies: the two outputs must not alias one buffer
  auto grad_w = total.narrow(0, 0, taps).to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
  auto grad_b = bias_requires_grad ? total.narrow(0, taps, C).to(x.scalar_type(), false, true)
                                   : at::empty({0}, x.options());
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
