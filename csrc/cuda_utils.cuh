// Small device helpers for the .cu kernels (no torch headers here: nvcc on torch headers is slow).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"

// Dynamic shared memory of a kernel, as a T*: use this macro (the CPU test emulator, tests/cuda_emu, defines its
// own version) rather than writing `extern __shared__` declarations by hand.
#ifndef TXN_DYNAMIC_SMEM
#define TXN_DYNAMIC_SMEM(T, name)                                \
  extern __shared__ __align__(16) unsigned char txn_smem_raw[]; \
  T* name = reinterpret_cast<T*>(txn_smem_raw)
#endif

namespace transxnet_ops {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls fn with a null pointer of the element type (float, __half or __nv_bfloat16) of `dtype`.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: return fn(static_cast<float*>(nullptr));
    case DType::Float16: return fn(static_cast<__half*>(nullptr));
    case DType::BFloat16: return fn(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

}  // namespace transxnet_ops
