// Self-test kernels of the CUDA-on-CPU emulator (selftest_*.cu, compiled like the csrc kernels; no torch here).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

// Runs self-test `name` on raw buffers and integer arguments; returns the CUDA error of its launch(es).
// *found is false when no self-test has that name.
cudaError_t txn_emu_selftest(const char* name, void* const* ptrs, int n_ptrs, const int64_t* args, int n_args,
                             bool* found);
// The WMMA group (selftest_wmma.cu), tried by txn_emu_selftest.
cudaError_t txn_emu_selftest_wmma(const char* name, void* const* ptrs, int n_ptrs, const int64_t* args, int n_args,
                                  bool* found);
