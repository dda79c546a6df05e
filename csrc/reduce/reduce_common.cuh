// Device helpers of the reduce-family kernels (osra_reduce, idconv_weights): parameters read/written in their
// own dtype, GELU, and a fixed-order block sum (deterministic: the same tree for every launch).
#pragma once
#include "cuda_utils.cuh"
#include "reduce/param_launch.h"

namespace transxnet_ops {

__device__ __forceinline__ float load_param(ParamRef p, int64_t i) {
  switch (p.dtype) {
    case DType::Float16: return __half2float(static_cast<const __half*>(p.ptr)[i]);
    case DType::BFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p.ptr)[i]);
    default: return static_cast<const float*>(p.ptr)[i];
  }
}

__device__ __forceinline__ void store_grad(GradRef g, int64_t i, float v) {
  switch (g.dtype) {
    case DType::Float16: static_cast<__half*>(g.ptr)[i] = __float2half_rn(v); break;
    case DType::BFloat16: static_cast<__nv_bfloat16*>(g.ptr)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(g.ptr)[i] = v;
  }
}

// x rounded to T and back: the value a kernel writing T (as the official conv does) hands to the next step.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

__device__ __forceinline__ float gelu(float z) { return 0.5f * z * (1.0f + erff(z * 0.70710678118654752f)); }

__device__ __forceinline__ float gelu_grad(float z) {  // Phi(z) + z * phi(z)
  return 0.5f * (1.0f + erff(z * 0.70710678118654752f)) + z * expf(-0.5f * z * z) * 0.3989422804014327f;
}

// Sum of v over the block (kThreads threads, a multiple of 32), returned to every thread. `scratch` holds
// kThreads / 32 floats of shared memory. Fixed shuffle tree, then the warps' sums in warp order.
template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused right away
  return total;
}

}  // namespace transxnet_ops
