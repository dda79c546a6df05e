// OSRA reduce path CUDA launchers (contract and math in reduce/reduce.h): raw pointers, x's element type given
// by DType, parameters in their own dtypes, the caller's stream. Kernels in reduce_cuda.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"
#include "reduce/param_launch.h"

namespace transxnet_ops {

struct ReduceShape {
  int64_t B, C, H, W, Ho, Wo;  // x (B, C, H, W) -> reduced map (B, C, Ho, Wo), both non-empty
  int64_t sr;                  // stride; the conv is k x k with k = sr + 3, padding k / 2
};

// Largest k * k the kernels keep in shared memory (k = sr + 3 <= 100).
constexpr int64_t kReduceMaxTaps = 100 * 100;

// The parameters as the op schema lists them; the running statistics are read by the eval forward only.
struct ReduceParamRefs {
  ParamRef conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var;
  ParamRef conv2_weight, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var;
  ParamRef local_weight, local_bias;
  float eps1, eps2;
};

struct ReduceGradRefs {
  GradRef conv1_weight, bn1_weight, bn1_bias, conv2_weight, bn2_weight, bn2_bias, local_weight, local_bias;
};

// fp32 floats of workspace each launcher needs.
int64_t osra_reduce_cuda_forward_workspace(const ReduceShape& s, bool training);
int64_t osra_reduce_cuda_backward_workspace(const ReduceShape& s);

// out (B, C, Ho, Wo); u (B, C, Ho, Wo) written when non-null (required in training); stats (6, C) fp32.
// Eval: 1 launch. Training: 3 launches (u + moments, BN1/GELU + moments, BN2 + local conv).
cudaError_t osra_reduce_cuda_forward(DType dtype, const ReduceShape& s, const ReduceParamRefs& p, bool training,
                                     const void* x, void* out, void* u, float* stats, float* workspace,
                                     cudaStream_t stream);

// grad_x (B, C, H, W) in x's dtype and the parameter gradients (each in its own dtype). Eval: 3 launches,
// training: 4. Deterministic: fp32 partials per (channel, tile) summed in a fixed order, no atomics.
cudaError_t osra_reduce_cuda_backward(DType dtype, const ReduceShape& s, const ReduceParamRefs& p,
                                      const ReduceGradRefs& g, bool training, const void* grad_out, const void* x,
                                      const void* u, const float* stats, void* grad_x, float* workspace,
                                      cudaStream_t stream);

}  // namespace transxnet_ops
