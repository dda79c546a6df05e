// Self-test kernels of the CUDA-on-CPU emulator: barriers, block and warp collectives, shared memory (static,
// dynamic, the 48 KB rule), launch validation, and kernels that are wrong on purpose (races, deadlocks, divergent
// barriers, invalid accesses) to prove the emulator notices. Written in the same CUDA subset as csrc and
// compiled the same way (tests/test_cuda_emu.py runs them through torch.ops.transxnet_ops_emu.emu_selftest).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda_utils.cuh"
#include "selftest.h"

namespace txn_selftest {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// out = s[n-1-t] + 2 s[(t+1) % n] with s staged from in; without the barrier threads read slots their
// neighbours have not written yet: the result then depends on the schedule.
template <bool kBarrier>
__global__ void neighbour_kernel(const float* in, float* out, int n) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  s[t] = in[base + t];
  if (kBarrier) __syncthreads();
  out[base + t] = s[n - 1 - t] + 2.f * s[(t + 1) % n];
}

__global__ void block_vote_kernel(const float* in, int* out) {
  const int p = in[threadIdx.x] > 0.f;
  const int count = __syncthreads_count(p), all = __syncthreads_and(p), any = __syncthreads_or(p);
  if (threadIdx.x == 0) {
    out[0] = count;
    out[1] = all;
    out[2] = any;
  }
}

// Warp shuffles; out has 6 rows of blockDim.x values.
__global__ void shuffle_kernel(const float* in, float* out, int src) {
  const int t = threadIdx.x, n = blockDim.x, lane = t % 32;
  const float v = in[t];
  float x = v;
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(kFull, x, o);
  float d = v;
  for (int o = 16; o > 0; o /= 2) d += __shfl_down_sync(kFull, d, o);
  float s = v;  // inclusive scan
  for (int o = 1; o < 32; o *= 2) {
    const float y = __shfl_up_sync(kFull, s, o);
    if (lane >= o) s += y;
  }
  out[0 * n + t] = x;
  out[1 * n + t] = d;
  out[2 * n + t] = s;
  out[3 * n + t] = __shfl_sync(kFull, v, src);
  out[4 * n + t] = __shfl_sync(kFull, v, (lane * 3 + 1) % 32);
  out[5 * n + t] = __shfl_xor_sync(kFull, v, 4, 8) + 10.f * __shfl_sync(kFull, v, 1, 8);
}

__global__ void warp_vote_kernel(const float* in, int* out) {
  const int t = threadIdx.x;
  const int p = in[t] > 0.f;
  out[3 * t + 0] = static_cast<int>(__ballot_sync(kFull, p));
  out[3 * t + 1] = __any_sync(kFull, p);
  out[3 * t + 2] = __all_sync(kFull, p);
  __syncwarp();
}

// Dynamic shared memory through the project's macro (kVariant: distinct kernels for distinct attribute settings).
template <int kVariant>
__global__ void dynamic_smem_kernel(float* out, int n) {
  TXN_DYNAMIC_SMEM(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = static_cast<float>(i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = buf[n - 1 - i];
}

// The raw CUDA spelling, rewritten by the emulator's preprocessor.
__global__ void extern_smem_kernel(float* out, int n) {
  extern __shared__ float raw_smem[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) raw_smem[i] = static_cast<float>(2 * i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = raw_smem[n - 1 - i];
}

__global__ void dynamic_smem_overrun_kernel(int n) {
  TXN_DYNAMIC_SMEM(float, buf);
  if (threadIdx.x == 0) buf[n] = 1.f;  // one element past the launch's dynamic shared memory
}

// Block 0 fills s; block 1 only reads it: it must see fresh (NaN-poisoned) shared memory, not block 0's values.
__global__ void shared_poison_kernel(float* out) {
  __shared__ float s[64];
  if (blockIdx.x == 0) s[threadIdx.x] = 1.f + threadIdx.x;
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[threadIdx.x];
}

// Template instantiations own separate static shared arrays.
template <int N>
__global__ void template_smem_kernel(float* out) {
  __shared__ float s[N];
  __shared__ int marker;
  if (threadIdx.x == 0) marker = N;
  s[threadIdx.x] = static_cast<float>(threadIdx.x * N);
  __syncthreads();
  out[threadIdx.x] = s[N - 1 - threadIdx.x] + static_cast<float>(marker);
}

__global__ void dims_kernel(int* out) {
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  int* o = out + 4 * (b * threads + t);
  o[0] = static_cast<int>(threadIdx.x + 100 * threadIdx.y + 10000 * threadIdx.z);
  o[1] = static_cast<int>(blockIdx.x + 100 * blockIdx.y + 10000 * blockIdx.z);
  o[2] = static_cast<int>(blockDim.x + 100 * blockDim.y + 10000 * blockDim.z);
  o[3] = static_cast<int>(gridDim.x + 100 * gridDim.y + 10000 * gridDim.z);
}

// The cuda_fp16.h / cuda_bf16.h conversions the kernels use (host implementations of the toolkit headers).
__global__ void convert_kernel(const float* in, unsigned short* half_bits, unsigned short* bf16_bits, float* back,
                               int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half h = __float2half_rn(in[i]);
  const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
  std::memcpy(&half_bits[i], &h, 2);
  std::memcpy(&bf16_bits[i], &b, 2);
  back[2 * i] = __half2float(h);
  back[2 * i + 1] = __bfloat162float(b);
}

__global__ void __launch_bounds__(64) bounded_kernel(int* out) {
  if (threadIdx.x == 0) out[0] = static_cast<int>(blockDim.x);
}

__global__ void noop_kernel(int* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1;
}

__global__ void write_n_kernel(float* out, int n, int overrun) {
  for (int i = threadIdx.x; i < n + overrun; i += blockDim.x) out[i] = static_cast<float>(i);
}

// Faults only the sanitizer build sees (asan_check.py): reads past an input or a static shared array (ASan), a
// misaligned float4 load (fine on x86, a fault on a GPU) and an index past a register array (UBSan).
__global__ void overread_kernel(const float* in, float* out, int n, int kind) {
  __shared__ float s[64];
  float r[4] = {1.f, 2.f, 3.f, 4.f};
  s[threadIdx.x] = 1.f;
  __syncthreads();
  if (threadIdx.x != 0) return;
  switch (kind) {
    case 0: out[0] = in[n]; break;
    case 1: out[0] = s[64 + n]; break;
    case 2: out[0] = reinterpret_cast<const float4*>(in + 1)->x; break;
    case 3: out[0] = r[n / 25]; break;  // n = 100: index 4
  }
}

// 40 KB of static shared memory: fits alone, not with 16 KB of dynamic shared memory unless the limit is raised.
template <int kVariant>
__global__ void big_static_smem_kernel(float* out) {
  __shared__ float s[10 * 1024];
  TXN_DYNAMIC_SMEM(float, dyn);
  for (int i = threadIdx.x; i < 10 * 1024; i += blockDim.x) s[i] = static_cast<float>(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = s[10 * 1024 - 1] + (dyn ? 0.f : 1.f);
}

__device__ __noinline__ float use_4mb_of_stack() {
  volatile char big[4 << 20];
  big[0] = 1;
  big[sizeof(big) - 1] = 1;
  return big[0];
}

// Kernels that are wrong on purpose; each must make the launch fail with a clear message.
__global__ void misbehave_kernel(float* out, int kind) {
  const int t = threadIdx.x, lane = t % 32;
  float v = static_cast<float>(t);
  switch (kind) {
    case 0:  // a thread leaves before a barrier the others wait at
      if (t == 5) return;
      __syncthreads();
      break;
    case 1:  // divergent barriers
      if (t < 16) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      break;
    case 2:  // full-mask shuffle in a partial warp (the launcher uses 48 threads)
      v = __shfl_xor_sync(kFull, v, 1);
      break;
    case 3:  // lanes of one warp at different collectives
      if (lane < 16) {
        v = __shfl_xor_sync(kFull, v, 1);
      } else {
        v = __shfl_xor_sync(kFull, v, 2);
      }
      break;
    case 4:  // a lane of the mask has exited
      if (lane == 3) return;
      v = __shfl_xor_sync(kFull, v, 1);
      break;
    case 5:  // reading a lane outside the mask
      if (lane < 16) v = __shfl_sync(0x0000ffffu, v, 20);
      break;
    case 6:  // invalid address
      *reinterpret_cast<volatile float*>(static_cast<uintptr_t>(64)) = v;
      break;
    case 7:  // stack overflow
      v += use_4mb_of_stack();
      break;
    case 8:
      if (t == 7) __trap();
      break;
    case 9:  // the calling lane is not in its mask
      v = __shfl_sync(0x1u, v, 0);
      break;
    case 10: {  // spin-wait until every thread has checked in: fine on a GPU, endless for cooperative threads
      __shared__ int arrived;
      if (t == 0) arrived = 0;
      __syncthreads();
      atomicAdd(&arrived, 1);
      while (*static_cast<volatile int*>(&arrived) < static_cast<int>(blockDim.x)) {
      }
      break;
    }
  }
  out[t] = v;
}

cudaError_t run_misbehave(float* out, int kind) {
  const int threads = kind == 2 ? 48 : 64;
  misbehave_kernel<<<2, threads, 0, txn_emu::current_stream()>>>(out, kind);
  return cudaGetLastError();
}

template <int kVariant>
cudaError_t run_dynamic_smem(float* out, int64_t bytes, int64_t opt_in) {
  if (opt_in > 0) {
    const cudaError_t err = cudaFuncSetAttribute(dynamic_smem_kernel<kVariant>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(opt_in));
    if (err != cudaSuccess) return err;
  }
  dynamic_smem_kernel<kVariant><<<1, 128, static_cast<size_t>(bytes), txn_emu::current_stream()>>>(
      out, static_cast<int>(bytes / 4));
  return cudaGetLastError();
}

}  // namespace
}  // namespace txn_selftest

cudaError_t txn_emu_selftest(const char* name_c, void* const* p, int n_ptrs, const int64_t* a, int n_args, bool* found) {
  using namespace txn_selftest;
  const cudaStream_t stream = txn_emu::current_stream();
  const auto is = [&](const char* s, int ptrs, int args) {
    if (std::strcmp(name_c, s) != 0) return false;
    if (n_ptrs != ptrs || n_args != args) {
      std::abort();  // the Python side passes a fixed signature per test
    }
    return true;
  };
  *found = true;
  float* f0 = n_ptrs > 0 ? static_cast<float*>(p[0]) : nullptr;
  if (is("neighbour", 2, 3)) {  // in, out; threads, blocks, barrier
    const auto in = static_cast<const float*>(p[0]);
    const auto out = static_cast<float*>(p[1]);
    const int n = static_cast<int>(a[0]);
    if (a[2]) {
      neighbour_kernel<true><<<static_cast<unsigned>(a[1]), n, 0, stream>>>(in, out, n);
    } else {
      neighbour_kernel<false><<<static_cast<unsigned>(a[1]), n, 0, stream>>>(in, out, n);
    }
    return cudaGetLastError();
  }
  if (is("block_vote", 2, 1)) {
    block_vote_kernel<<<1, static_cast<unsigned>(a[0]), 0, stream>>>(f0, static_cast<int*>(p[1]));
    return cudaGetLastError();
  }
  if (is("shuffle", 2, 2)) {  // threads, src lane
    shuffle_kernel<<<1, static_cast<unsigned>(a[0]), 0, stream>>>(f0, static_cast<float*>(p[1]), static_cast<int>(a[1]));
    return cudaGetLastError();
  }
  if (is("warp_vote", 2, 1)) {
    warp_vote_kernel<<<1, static_cast<unsigned>(a[0]), 0, stream>>>(f0, static_cast<int*>(p[1]));
    return cudaGetLastError();
  }
  if (is("dynamic_smem", 1, 2)) return run_dynamic_smem<0>(f0, a[0], a[1]);  // bytes, opt-in (<= 0: none)
  if (is("dynamic_smem_optin", 1, 2)) return run_dynamic_smem<1>(f0, a[0], a[1]);
  if (is("extern_smem", 1, 1)) {
    extern_smem_kernel<<<1, 96, static_cast<size_t>(a[0]), stream>>>(f0, static_cast<int>(a[0] / 4));
    return cudaGetLastError();
  }
  if (is("dynamic_smem_overrun", 0, 1)) {
    dynamic_smem_overrun_kernel<<<1, 32, static_cast<size_t>(a[0]), stream>>>(static_cast<int>(a[0] / 4));
    return cudaGetLastError();
  }
  if (is("shared_poison", 1, 0)) {
    shared_poison_kernel<<<2, 64, 0, stream>>>(f0);
    return cudaGetLastError();
  }
  if (is("template_smem", 2, 0)) {  // two instantiations, interleaved
    template_smem_kernel<32><<<1, 32, 0, stream>>>(f0);
    template_smem_kernel<64><<<1, 64, 0, stream>>>(static_cast<float*>(p[1]));
    template_smem_kernel<32><<<1, 32, 0, stream>>>(f0 + 32);
    return cudaGetLastError();
  }
  if (is("dims", 1, 6)) {  // grid xyz, block xyz
    const dim3 grid(static_cast<unsigned>(a[0]), static_cast<unsigned>(a[1]), static_cast<unsigned>(a[2]));
    const dim3 block(static_cast<unsigned>(a[3]), static_cast<unsigned>(a[4]), static_cast<unsigned>(a[5]));
    dims_kernel<<<grid, block, 0, stream>>>(static_cast<int*>(p[0]));
    return cudaGetLastError();
  }
  if (is("launch", 1, 8)) {  // grid xyz, block xyz, dynamic smem, launch on the legacy default stream
    const dim3 grid(static_cast<unsigned>(a[0]), static_cast<unsigned>(a[1]), static_cast<unsigned>(a[2]));
    const dim3 block(static_cast<unsigned>(a[3]), static_cast<unsigned>(a[4]), static_cast<unsigned>(a[5]));
    noop_kernel<<<grid, block, static_cast<size_t>(a[6]), a[7] ? nullptr : stream>>>(static_cast<int*>(p[0]));
    return cudaGetLastError();
  }
  if (is("launch_bounds", 1, 1)) {  // threads; the kernel declares __launch_bounds__(64)
    bounded_kernel<<<1, static_cast<unsigned>(a[0]), 0, stream>>>(static_cast<int*>(p[0]));
    return cudaGetLastError();
  }
  if (is("write_n", 1, 2)) {  // n, overrun
    write_n_kernel<<<1, 64, 0, stream>>>(f0, static_cast<int>(a[0]), static_cast<int>(a[1]));
    return cudaGetLastError();
  }
  if (is("misbehave", 1, 1)) return run_misbehave(f0, static_cast<int>(a[0]));
  if (is("static_smem_budget", 1, 2)) {  // dynamic bytes, opt-in (<= 0: none)
    const size_t dyn = static_cast<size_t>(a[0]);
    if (a[1] > 0) {
      const cudaError_t err = cudaFuncSetAttribute(big_static_smem_kernel<1>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(a[1]));
      if (err != cudaSuccess) return err;
      big_static_smem_kernel<1><<<2, 64, dyn, stream>>>(f0);
    } else {
      big_static_smem_kernel<0><<<2, 64, dyn, stream>>>(f0);
    }
    return cudaGetLastError();
  }
  if (is("overread", 2, 2)) {  // in (n floats), out; n, kind (see overread_kernel)
    overread_kernel<<<1, 64, 0, stream>>>(f0, static_cast<float*>(p[1]), static_cast<int>(a[0]), static_cast<int>(a[1]));
    return cudaGetLastError();
  }
  if (is("convert", 4, 1)) {  // in, half bits, bf16 bits, back (2n); n
    const int n = static_cast<int>(a[0]);
    convert_kernel<<<static_cast<unsigned>((n + 127) / 128), 128, 0, stream>>>(
        f0, static_cast<unsigned short*>(p[1]), static_cast<unsigned short*>(p[2]), static_cast<float*>(p[3]), n);
    return cudaGetLastError();
  }
  if (is("device_attributes", 1, 0)) {
    int* out = static_cast<int*>(p[0]);
    cudaError_t err = cudaDeviceGetAttribute(&out[0], cudaDevAttrMultiProcessorCount, 0);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&out[1], cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&out[2], cudaDevAttrMaxSharedMemoryPerBlock, 0);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&out[3], cudaDevAttrMaxThreadsPerBlock, 0);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&out[4], cudaDevAttrMaxRegistersPerBlock, 0);
    if (err == cudaSuccess) err = cudaGetDevice(&out[5]);
    cudaFuncAttributes attr;
    if (err == cudaSuccess) err = cudaFuncGetAttributes(&attr, noop_kernel);
    out[6] = attr.maxDynamicSharedSizeBytes;
    return err;
  }
  return txn_emu_selftest_wmma(name_c, p, n_ptrs, a, n_args, found);
}
