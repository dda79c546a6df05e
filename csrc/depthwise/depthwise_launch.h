// Depthwise-convolution CUDA kernel family shared by idconv (per-sample weights) and dwconv2d (static,
// multi-scale weights): raw pointers (element type given by DType), sizes, the caller's stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"
#include "depthwise/depthwise_layout.h"

namespace transxnet_ops {

// A run of consecutive channels sharing one odd kernel size.
struct DepthwiseSegment {
  int64_t channels;
  int64_t kernel_size;
};

// x (B, C, H, W), contiguous NCHW or a channels-innermost (NHWC) view (`layout`; the outputs are laid out as the
// layout says); stride 1, zero padding k//2 per segment; segments cover the C channels in order.
// Static weights (per_sample_weights = false): weight 1-D, the concatenation over segments of their
// (channels, 1, k, k) weights; bias (C,). Per-sample weights (IDConv, one segment): weight (B, C, k, k), bias (B, C).
// Weights and biases are always contiguous.
struct DepthwiseProblem {
  int64_t batch, channels, height, width;
  const DepthwiseSegment* segments;  // host array of num_segments entries
  int num_segments;
  bool per_sample_weights;
  DepthwiseLayout layout;  // NCHW by default; NHWC problems run the kernels of depthwise_nhwc_kernels.cuh
};

constexpr int64_t kDepthwiseMaxKernelSize = 31;

// y = conv(x, weight) + bias; bias may be null.
cudaError_t depthwise_cuda_forward(DType dtype, const DepthwiseProblem& problem, const void* x, const void* weight,
                                   const void* bias, void* y, cudaStream_t stream);

// fp32 workspace (number of floats) that depthwise_cuda_backward needs for this problem on the current device:
// the weight/bias-gradient partial sums when a gradient is reduced across blocks (0 when every block owns its
// gradients, e.g. IDConv planes that fit one block).
int64_t depthwise_cuda_backward_workspace(const DepthwiseProblem& problem);

// One fused pass over grad_y and x: grad_x, grad_weight (laid out like weight) and grad_bias (laid out like the
// bias; skipped when null). Deterministic: fixed-order fp32 reductions, no atomics.
cudaError_t depthwise_cuda_backward(DType dtype, const DepthwiseProblem& problem, const void* grad_y, const void* x,
                                    const void* weight, void* grad_x, void* grad_weight, void* grad_bias,
                                    float* workspace, cudaStream_t stream);

}  // namespace transxnet_ops
