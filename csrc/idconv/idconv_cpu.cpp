// IDConv on CPU: per-sample depthwise KxK convolution, stride 1, zero padding K/2, on the depthwise kernel family
// (depthwise/depthwise_cpu.h): every (b, c) plane has its own kernel.
//
// 3 x 3 kernels on planes at least half a vector wide run on the strip kernels (depthwise3x3_cpu.h), one task per
// plane. Otherwise planes at least a vector wide use the row layout: forward tasks are (plane, band of rows), so a
// few large planes still keep every thread busy; backward tasks are whole planes. Narrower planes use the packed
// layout, one task per `lanes` consecutive planes. A task computes grad_x and its planes' weight and bias gradients together, each
// summed in a fixed order (deterministic, no atomics, independent of the thread count). float16 / bfloat16 run in
// float32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "depthwise/depthwise3x3_cpu.h"
#include "depthwise/depthwise_cpu.h"
#include "idconv/idconv.h"

namespace transxnet_ops {
namespace {

using depthwise::Grads3x3;
using depthwise::PackedLayout;
using depthwise::RowLayout;
using depthwise::Workspace;

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

template <typename T>
void forward(const T* x, const T* w, const T* bias, T* y, int64_t planes, int64_t H, int64_t W, int64_t K) {
  const int64_t HW = H * W, KK = K * K, lanes = depthwise::lanes_for<T>();
  if (K == 3 && W >= depthwise::strip3x3_min_width<T>()) {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        depthwise::forward3x3(x + n * HW, w + n * KK, bias ? bias[n] : T(0), y + n * HW, H, W);
    });
    return;
  }
  if (depthwise::use_packed(W, lanes)) {
    const PackedLayout g(H, W, K, lanes);
    at::parallel_for(0, (planes + lanes - 1) / lanes, 1, [&](int64_t begin, int64_t end) {
      Workspace<T> ws;
      for (int64_t group = begin; group < end; ++group) {
        const int64_t n0 = group * lanes, n = std::min(lanes, planes - n0);
        depthwise::packed_weights(w + n0 * KK, n, false, g, ws);
        depthwise::forward_packed(x + n0 * HW, n, bias ? bias + n0 : nullptr, y + n0 * HW, g, ws);
      }
    });
    return;
  }
  const RowLayout g(H, W, K, lanes);
  const int64_t bands = (H + g.band - 1) / g.band;
  at::parallel_for(0, planes * bands, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / bands, h0 = (task % bands) * g.band;
      depthwise::row_weights(w + n * KK, false, g, ws);
      depthwise::forward_rows(x + n * HW, bias ? bias[n] : T(0), y + n * HW, h0, std::min(H, h0 + g.band), g, ws);
    }
  });
}

template <typename T>
void backward(const T* gy, const T* x, const T* w, T* gx, T* gw, T* gb, int64_t planes, int64_t H, int64_t W,
              int64_t K) {
  const int64_t HW = H * W, KK = K * K, lanes = depthwise::lanes_for<T>();
  if (K == 3 && W >= depthwise::strip3x3_min_width<T>()) {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      Grads3x3<T> strip;
      for (int64_t n = begin; n < end; ++n) {
        strip.zero();
        depthwise::backward3x3(gy + n * HW, x + n * HW, w + n * KK, gx + n * HW, H, W, strip);
        depthwise::grads3x3(strip, gw + n * KK, gb + n);
      }
    });
    return;
  }
  if (depthwise::use_packed(W, lanes)) {
    const PackedLayout g(H, W, K, lanes);
    at::parallel_for(0, (planes + lanes - 1) / lanes, 1, [&](int64_t begin, int64_t end) {
      Workspace<T> ws;
      for (int64_t group = begin; group < end; ++group) {
        const int64_t n0 = group * lanes, n = std::min(lanes, planes - n0);
        depthwise::packed_weights(w + n0 * KK, n, true, g, ws);
        ws.zero_grads(K, g.KAp, lanes);
        depthwise::backward_packed(gy + n0 * HW, x + n0 * HW, n, gx + n0 * HW, g, ws);
        for (int64_t l = 0; l < n; ++l) depthwise::packed_grads(g, ws, l, gw + (n0 + l) * KK, gb + n0 + l);
      }
    });
    return;
  }
  const RowLayout g(H, W, K, lanes);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    Workspace<T> ws;
    for (int64_t n = begin; n < end; ++n) {
      depthwise::row_weights(w + n * KK, true, g, ws);
      ws.zero_grads(K, g.KAp, lanes);
      depthwise::backward_rows(gy + n * HW, x + n * HW, gx + n * HW, g, ws);
      depthwise::row_grads(g, ws, gw + n * KK, gb + n);
    }
  });
}

}  // namespace

at::Tensor idconv_forward_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (is_reduced_float(x)) {
    std::optional<at::Tensor> b;
    if (bias.has_value()) b = bias->to(at::kFloat);
    return idconv_forward_cpu(x.to(at::kFloat), weight.to(at::kFloat), b).to(x.scalar_type());
  }
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "idconv_forward_cpu", [&] {
    forward(x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
            bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, y.mutable_data_ptr<scalar_t>(),
            x.size(0) * x.size(1), x.size(2), x.size(3), weight.size(2));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                   const at::Tensor& weight) {
  if (is_reduced_float(x)) {
    auto [gx, gw, gb] = idconv_backward_cpu(grad_y.to(at::kFloat), x.to(at::kFloat), weight.to(at::kFloat));
    return {gx.to(x.scalar_type()), gw.to(x.scalar_type()), gb.to(x.scalar_type())};
  }
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  auto grad_b = at::empty({x.size(0), x.size(1)}, x.options());
  if (x.numel() == 0) {  // no outputs: the weight and bias gradients are empty sums
    grad_w.zero_();
    grad_b.zero_();
    return {grad_x, grad_w, grad_b};
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "idconv_backward_cpu", [&] {
    backward(grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
             grad_x.mutable_data_ptr<scalar_t>(), grad_w.mutable_data_ptr<scalar_t>(),
             grad_b.mutable_data_ptr<scalar_t>(), x.size(0) * x.size(1), x.size(2), x.size(3), weight.size(2));
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
