// Torch side of the depthwise CUDA kernels' activation layout: which kernels a call takes (NCHW or channels-last,
// by activation_layout.h's rule) and the strides they read and write.
#pragma once
#include <ATen/ATen.h>

#include "activation_layout.h"
#include "depthwise/depthwise_layout.h"

namespace transxnet_ops {

inline NhwcStrides nhwc_strides(const at::Tensor& t) { return {t.stride(0), t.stride(2), t.stride(3)}; }

// An output shaped like x in x's layout (channels_last for channels-last inputs).
inline at::Tensor empty_activation(const at::Tensor& x) { return at::empty_like(x, activation_format(x)); }

// The kernels' layout for x, y / grad_x (`out`) and, in backward, grad_y. The op front (op_impls.h) passes
// channels-last inputs as they are (channels innermost) and grad_y in x's layout.
inline DepthwiseLayout depthwise_layout(const at::Tensor& x, const at::Tensor& out,
                                        const at::Tensor* grad_y = nullptr) {
  DepthwiseLayout l;
  l.channels_last = channels_last_activation(x);
  if (!l.channels_last) return l;
  TORCH_CHECK(x.stride(1) == 1 && out.stride(1) == 1 && (grad_y == nullptr || grad_y->stride(1) == 1),
              "depthwise CUDA kernels: channels-last activations must have channels innermost");
  l.x = nhwc_strides(x);
  l.out = nhwc_strides(out);
  if (grad_y != nullptr) l.grad_y = nhwc_strides(*grad_y);
  return l;
}

}  // namespace transxnet_ops
