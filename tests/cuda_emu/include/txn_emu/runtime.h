// CUDA-on-CPU test emulator, host side: the CUDA runtime API subset our launchers and bindings use, answered
// as an H100 (132 SMs, 48 KB default / 227 KB opt-in dynamic shared memory, 1024 threads per block) would.
// Types (cudaError_t, dim3, float4, cudaDeviceProp, ...) come from the real toolkit headers, so they are exact;
// the functions are inline C++ (never the extern "C" symbols of libcudart, which torch has loaded).
// Errors behave like CUDA's: a failed call or launch records the error, cudaGetLastError returns and clears
// it, cudaPeekAtLastError returns it. Execution faults found by the emulator (deadlock, divergent barrier,
// invalid memory access) are recorded the same way, with a detailed message in cudaGetErrorString.
#pragma once
#ifndef TXN_CUDA_EMU
#error "tests/cuda_emu headers are only for the emulator build (-DTXN_CUDA_EMU)"
#endif

// The toolkit's cuda_runtime_api.h (pulled in by vector_functions.h) declares the runtime as extern "C"
// functions: keep it out, the emulator defines its own C++ versions below.
#ifndef __CUDA_RUNTIME_API_H__
#define __CUDA_RUNTIME_API_H__
#endif
#include <builtin_types.h>
#include <driver_types.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace txn_emu {

// --- error state (runtime.cpp) ---
cudaError_t record_error(cudaError_t err, const char* detail = nullptr);  // returns err
cudaError_t take_last_error();
cudaError_t peek_last_error();
const char* error_string(cudaError_t err);  // CUDA's text, plus the emulator's detail for the last fault
const char* error_name(cudaError_t err);

// --- emulated device ---
struct DeviceLimits {
  static constexpr int kSMs = 132;
  static constexpr int kMaxThreadsPerBlock = 1024;
  static constexpr int kMaxBlockDimZ = 64;
  static constexpr int kDefaultDynamicSmem = 48 * 1024;
  static constexpr int kMaxDynamicSmemOptin = 227 * 1024;
  static constexpr int kSmemPerSM = 228 * 1024;
  static constexpr int kRegsPerBlock = 65536;
  static constexpr int kMaxThreadsPerSM = 2048;
  static constexpr int kMaxBlocksPerSM = 32;
};
int device_attribute(cudaDeviceAttr attr, bool* known);
void fill_device_properties(cudaDeviceProp* prop);

// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel (keyed by the kernel's address).
cudaError_t set_func_attribute(const void* func, cudaFuncAttribute attr, int value);
int func_max_dynamic_smem(const void* func);

// The stream torch's getCurrentCUDAStream() returns in emulation: a recognisable fake handle, so a launch on the
// legacy default stream (0) instead of the caller's stream is reported as an error.
cudaStream_t current_stream();
bool set_require_current_stream(bool on);  // returns the previous setting

}  // namespace txn_emu

// --- runtime API (the subset CUDA_RULES.md allows, plus a few harmless extras) ---
inline cudaError_t cudaGetLastError() { return txn_emu::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return txn_emu::peek_last_error(); }
inline const char* cudaGetErrorString(cudaError_t err) { return txn_emu::error_string(err); }
inline const char* cudaGetErrorName(cudaError_t err) { return txn_emu::error_name(err); }

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : txn_emu::record_error(cudaErrorInvalidDevice);
}
inline cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return txn_emu::record_error(cudaErrorInvalidDevice);
  bool known = false;
  *value = txn_emu::device_attribute(attr, &known);
  return known ? cudaSuccess : txn_emu::record_error(cudaErrorInvalidValue, "device attribute not emulated");
}
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return txn_emu::record_error(cudaErrorInvalidDevice);
  txn_emu::fill_device_properties(prop);
  return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  return txn_emu::set_func_attribute(func, attr, value);
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return txn_emu::set_func_attribute(reinterpret_cast<const void*>(func), attr, value);
}
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, const void* func) {
  std::memset(attr, 0, sizeof(*attr));
  attr->maxThreadsPerBlock = txn_emu::DeviceLimits::kMaxThreadsPerBlock;
  attr->maxDynamicSharedSizeBytes = txn_emu::func_max_dynamic_smem(func);
  attr->ptxVersion = attr->binaryVersion = 90;
  attr->preferredShmemCarveout = -1;
  return cudaSuccess;  // static shared memory, registers and local memory are unknown here (reported as 0)
}
template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F* func) {
  return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(func));
}
template <class F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F* /*func*/, int block_size,
                                                          size_t dynamic_smem) {
  using L = txn_emu::DeviceLimits;
  if (block_size <= 0 || block_size > L::kMaxThreadsPerBlock) return txn_emu::record_error(cudaErrorInvalidValue);
  int n = L::kMaxThreadsPerSM / block_size;
  if (n > L::kMaxBlocksPerSM) n = L::kMaxBlocksPerSM;
  const size_t per_block = dynamic_smem + 1024;  // the 1 KB the driver reserves per block
  if (static_cast<size_t>(n) * per_block > static_cast<size_t>(L::kSmemPerSM)) n = L::kSmemPerSM / per_block;
  *blocks = n;  // registers and static shared memory are not known to the emulator
  return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize() { return txn_emu::peek_last_error(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return txn_emu::peek_last_error(); }
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* dst, int value, size_t n) {
  std::memset(dst, value, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t n, cudaStream_t = nullptr) {
  std::memset(dst, value, n);
  return cudaSuccess;
}
