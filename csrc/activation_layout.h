// Memory layout of the depthwise ops' activations (x, y, grad_y, grad_x), torch side. One rule for every backend
// (C++, CUDA, Triton, and the fakes in transxnet_ops/_fakes.py): an input whose channels are innermost
// (stride(1) == 1, more than one channel) and that is not NCHW-contiguous - a channels_last tensor or a
// batch/spatial/channel slice of one - gets channels_last outputs, as nn.Conv2d does; any other input gets
// NCHW-contiguous outputs.
#pragma once
#include <ATen/core/Tensor.h>

namespace transxnet_ops {

inline bool channels_last_activation(const at::Tensor& x) {
  return x.dim() == 4 && x.size(1) > 1 && x.stride(1) == 1 && !x.is_contiguous();
}

inline at::MemoryFormat activation_format(const at::Tensor& x) {
  return channels_last_activation(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace transxnet_ops
