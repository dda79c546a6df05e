// IDConv CUDA launchers: raw pointers (element type given by DType), sizes, the caller's stream. The kernels are
// the depthwise family of csrc/depthwise/ with per-sample weights.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"
#include "depthwise/depthwise_layout.h"

namespace transxnet_ops {

// layout: NCHW-contiguous activations, or channels-innermost views (depthwise_layout.h).
struct IdconvShape {
  int64_t B, C, H, W, K;
  DepthwiseLayout layout{};
};

// y = x (*) w + bias per (b, c) plane; bias (B, C) may be null.
cudaError_t idconv_cuda_forward(DType dtype, const void* x, const void* w, const void* bias, void* y,
                                const IdconvShape& s, cudaStream_t stream);

// fp32 floats of workspace idconv_cuda_backward needs (0 when every plane fits one block).
int64_t idconv_cuda_backward_workspace(const IdconvShape& s);

// grad_x (B, C, H, W), grad_w (B, C, K, K) and grad_b (B, C) in one fused pass; deterministic, no atomics.
cudaError_t idconv_cuda_backward(DType dtype, const void* grad_y, const void* x, const void* w, void* grad_x,
                                 void* grad_w, void* grad_b, float* workspace, const IdconvShape& s,
                                 cudaStream_t stream);

}  // namespace transxnet_ops
