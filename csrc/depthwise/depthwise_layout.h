// Memory layout of the depthwise kernels' activations (x, y, grad_y, grad_x). Plain data shared by the torch
// bindings, the launchers and the kernels.
#pragma once
#include <cstdint>

namespace transxnet_ops {

// Element (b, c, h, w) of a channels-innermost (NHWC) view sits at b * batch + h * row + w * pixel + c: a
// channels_last tensor, or a batch/spatial/channel slice of one.
struct NhwcStrides {
  int64_t batch, row, pixel;
};

// NCHW (channels_last = false): every activation is contiguous (B, C, H, W). NHWC: each activation is a
// channels-innermost view with its own strides; the forward reads `x` and writes `out` (y), the backward reads
// `grad_y` and `x` and writes `out` (grad_x).
struct DepthwiseLayout {
  bool channels_last = false;
  NhwcStrides x{}, grad_y{}, out{};
};

}  // namespace transxnet_ops
