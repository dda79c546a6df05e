// Helpers for the CUDA bindings (.cpp files that include torch and call the .cu launchers).
#pragma once
#include <ATen/ATen.h>
#ifdef TXN_CUDA_EMU  // CPU test emulator (tests/cuda_emu): fake current stream, no-op device guard
#include "txn_emu/binding.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "cuda_dtype.h"

namespace transxnet_ops {

inline DType cuda_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, op, ": the CUDA kernels take float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace transxnet_ops
