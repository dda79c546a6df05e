// Channels-last (NHWC) launchers of the depthwise family: the entry points of depthwise_launch.h forward problems
// whose layout is channels_last here (same contracts, arguments already validated, non-empty).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "depthwise/depthwise_launch.h"

namespace transxnet_ops {

cudaError_t depthwise_nhwc_forward(DType dtype, const DepthwiseProblem& problem, const void* x, const void* weight,
                                   const void* bias, void* y, cudaStream_t stream);

int64_t depthwise_nhwc_backward_workspace(const DepthwiseProblem& problem);

cudaError_t depthwise_nhwc_backward(DType dtype, const DepthwiseProblem& problem, const void* grad_y, const void* x,
                                    const void* weight, void* grad_x, void* grad_weight, void* grad_bias,
                                    float* workspace, cudaStream_t stream);

}  // namespace transxnet_ops
