// CUDA-on-CPU test emulator: what the *_cuda_bind.cpp files use from torch's CUDA side, for CPU tensors.
// csrc/cuda_binding.h includes this instead of ATen/cuda/CUDAContext.h when TXN_CUDA_EMU is defined.
// getCurrentCUDAStream() returns the emulator's fake current stream (launches on any other stream fail);
// device guards do nothing (there is one emulated device).
#pragma once
#include <ATen/ATen.h>
#include <c10/core/Device.h>

#include <optional>

#include "txn_emu/runtime.h"

namespace c10::cuda {

class CUDAStream {
 public:
  cudaStream_t stream() const { return txn_emu::current_stream(); }
  operator cudaStream_t() const { return stream(); }  // NOLINT: implicit like torch's CUDAStream
  c10::DeviceIndex device_index() const { return 0; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};

struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  explicit OptionalCUDAGuard(std::optional<c10::Device>) {}
  explicit OptionalCUDAGuard(c10::Device) {}
  void set_device(c10::Device) {}
  void reset() {}
};

}  // namespace c10::cuda

namespace at::cuda {
using c10::cuda::CUDAGuard;
using c10::cuda::CUDAStream;
using c10::cuda::getCurrentCUDAStream;
using c10::cuda::OptionalCUDAGuard;

inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp prop = [] {
    cudaDeviceProp p;
    txn_emu::fill_device_properties(&p);
    return p;
  }();
  return &prop;
}
inline cudaDeviceProp* getDeviceProperties(c10::DeviceIndex) { return getCurrentDeviceProperties(); }
}  // namespace at::cuda

#ifndef C10_CUDA_CHECK
#define C10_CUDA_CHECK(EXPR)                                                                    \
  do {                                                                                          \
    const cudaError_t txn_emu_err = (EXPR);                                                     \
    TORCH_CHECK(txn_emu_err == cudaSuccess, "CUDA error: ", cudaGetErrorString(txn_emu_err)); \
  } while (0)
#endif
#ifndef C10_CUDA_KERNEL_LAUNCH_CHECK
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
#endif
