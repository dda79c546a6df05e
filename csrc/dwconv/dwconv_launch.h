// Static (multi-scale) depthwise convolution CUDA launchers: raw pointers (element type given by DType), sizes,
// the caller's stream. The kernels are the depthwise family of csrc/depthwise/; all segments run in one launch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"
#include "depthwise/depthwise_layout.h"

namespace transxnet_ops {

// x (B, C, H, W), NCHW-contiguous or a channels-innermost view (`layout`, depthwise_layout.h); segment s: split_sizes[s] channels with odd kernel size kernel_sizes[s].
struct DwconvShape {
  int64_t B, C, H, W;
  const int64_t* split_sizes;
  const int64_t* kernel_sizes;
  int num_segments;
  DepthwiseLayout layout{};
};

// y = depthwise conv of x with the packed weight, plus bias (C,) when non-null.
cudaError_t dwconv_cuda_forward(DType dtype, const void* x, const void* weight, const void* bias, void* y,
                                const DwconvShape& s, cudaStream_t stream);

// fp32 floats of workspace dwconv_cuda_backward needs (per-batch-chunk partial sums of grad_weight/grad_bias).
int64_t dwconv_cuda_backward_workspace(const DwconvShape& s);

// grad_x, grad_weight (packed like weight) and, when grad_bias is non-null, grad_bias (C,), in one fused pass plus
// a fixed-order reduction of fp32 partials over batch chunks: deterministic, no atomics.
cudaError_t dwconv_cuda_backward(DType dtype, const void* grad_y, const void* x, const void* weight, void* grad_x,
                                 void* grad_weight, void* grad_bias, float* workspace, const DwconvShape& s,
                                 cudaStream_t stream);

}  // namespace transxnet_ops
