// Host-side device facts the depthwise planners size their launches by, queried once per device (at the first
// launch, never at import), and the dynamic shared-memory opt-in of a kernel.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <mutex>

namespace transxnet_ops {
namespace depthwise {

struct Device {
  int sms = 132;
  size_t smem_optin = 227 * 1024;   // per block
  size_t smem_per_sm = 228 * 1024;
};

inline Device query_device(int dev) {
  Device d;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0) d.sms = v;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess && v > 0)
    d.smem_optin = static_cast<size_t>(v);
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) == cudaSuccess && v > 0)
    d.smem_per_sm = static_cast<size_t>(v);
  return d;
}

// The current device's properties (cached per device).
inline Device current_device() {
  constexpr int kMaxDevices = 64;
  static std::once_flag once[kMaxDevices];
  static Device cache[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return Device{};
  std::call_once(once[dev], [dev] { cache[dev] = query_device(dev); });
  return cache[dev];
}

// Kernels above 48 KB of dynamic shared memory must opt in (per device); `granted` (one slot per device, owned
// by the caller per kernel) remembers the largest size granted.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes, std::atomic<size_t>* granted) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::atomic<size_t>& g = granted[dev % 64];
  if (g.load() >= bytes) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) g.store(bytes);
  return err;
}

}  // namespace depthwise
}  // namespace transxnet_ops
