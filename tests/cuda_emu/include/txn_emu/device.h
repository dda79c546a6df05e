// CUDA-on-CPU test emulator, device side. tests/cuda_emu/build.py puts `#include "txn_emu/device.h"` at the top
// of every csrc/*/*_cuda.cu (compiled by g++ as C++20 with -DTXN_CUDA_EMU) and rewrites
//   kernel<targs><<<grid, block, smem, stream>>>(args);   ->  ::txn_emu::launch("kernel<targs>", ..., kernel<targs>, ...)
//   __shared__ T a[N], b[M];                               ->  static T a[N], b[M]; (+ NaN-poisoned per block)
//   extern __shared__ T name[];                            ->  T* name = ::txn_emu::dynamic_smem<T>();
//   __launch_bounds__(N) kernel(...) {                     ->  ... { ::txn_emu::check_launch_bounds(..., N);
// Execution model (tests/cuda_emu/runtime.cpp): blocks run one after another; the threads of a block are
// cooperative fibers, each with its own stack. A thread runs until it reaches __syncthreads(), a warp collective
// (__syncwarp, shuffles, votes, WMMA) or its end; between those points threads run in a varying order (forward,
// reverse, seeded shuffle: env TXN_EMU_SCHEDULE), so a missing barrier changes results. Barriers wait for every
// thread of the block and warp collectives for every lane of their mask; a barrier or collective that can never
// complete (early return, divergent call sites, partial warps) is reported as a launch failure, never a hang;
// a watchdog fails launches that run past TXN_EMU_TIMEOUT_S CPU seconds (endless loops, spin-waits).
// threadIdx/blockIdx/blockDim/gridDim are globals the scheduler sets on every switch.
// Not modelled: timing, the memory model (fences are no-ops), inline PTX, cp.async/TMA, cooperative groups;
// atomics are plain read-modify-writes (threads never interleave inside them), so their ordering is not varied.
#pragma once
#include "txn_emu/runtime.h"

#include <cmath>
#include <cstdarg>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#undef __host__
#undef __device__
#undef __global__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __host__
#define __device__
#define __global__
#define __shared__ static  // the preprocessor rewrites declarations it can parse (adds per-block poisoning)
#define __constant__ static
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#ifndef TXN_DYNAMIC_SMEM
#define TXN_DYNAMIC_SMEM(T, name) T* name = ::txn_emu::dynamic_smem<T>()
#endif

namespace txn_emu {

// ---------------------------------------------------------------- builtin variables of the running thread
extern uint3 g_thread_idx;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

// ---------------------------------------------------------------- engine interface (runtime.cpp)
// Aborts the launch from kernel code: the launch records `err` with this message; never returns.
[[noreturn]] void fault(cudaError_t err, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// One lane's part of a warp collective. Every lane in `mask` must post an op from the same call site; the
// last one to arrive runs `resolve` for all of them (lanes[l] is null for lanes outside the mask).
struct WarpOp;
using WarpResolve = void (*)(WarpOp* const* lanes, unsigned mask);
struct WarpOp {
  const char* what;
  const char* file;
  int line;
  unsigned mask;
  WarpResolve resolve;
  int kind;          // op-specific
  int arg;           // op-specific (source lane, delta, lane mask, ...)
  int width;         // shuffles
  const void* in;    // this lane's operand(s)
  void* out;         // this lane's result
};
void warp_sync(WarpOp& op);
int block_sync(const char* what, const char* file, int line, int predicate, int reduce);  // reduce: 0 none, 1 count, 2 and, 3 or
unsigned lane_id();

// Injected at the top of kernels declared with __launch_bounds__(max_threads, ...): a block larger than that
// fails the launch, as it does on a GPU.
void check_launch_bounds(const char* file, int line, int max_threads, int min_blocks = 0, int max_cluster = 0);

void* dynamic_smem_base();
template <class T>
T* dynamic_smem() {
  return static_cast<T*>(dynamic_smem_base());
}

// Static __shared__ arrays are function-local statics (one block runs at a time). The first thread of a block
// to reach their declaration fills them with 0xFF bytes (NaN), as shared memory holds garbage on a GPU.
struct SharedRegion {
  void* ptr;
  size_t bytes;
};
bool shared_touch(std::initializer_list<SharedRegion> regions);

// ---------------------------------------------------------------- launch
struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
inline LaunchConfig make_config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return {grid, block, smem, stream};
}

struct KernelLaunch {
  const char* name;  // source text of the kernel expression
  const char* file;
  int line;
  const void* func;         // the kernel's address (for cudaFuncSetAttribute limits)
  void (*invoke)(void*);    // runs the kernel body for the current thread
  void* payload;
};
void run_kernel(const KernelLaunch& launch, const LaunchConfig& config);

// kernel<<<config>>>(args...): the arguments are converted to the kernel's parameter types once, as CUDA
// does, and every thread receives its own copy.
template <class... P, class... A>
void launch(const char* name, const char* file, int line, void (*kernel)(P...), const LaunchConfig& config,
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  struct Payload {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> args;
  };
  Payload payload{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  const KernelLaunch info{name, file, line, reinterpret_cast<const void*>(kernel),
                          [](void* p) {
                            auto* pl = static_cast<Payload*>(p);
                            std::apply(pl->kernel, pl->args);
                          },
                          &payload};
  run_kernel(info, config);
}

// ---------------------------------------------------------------- warp collectives
enum ShuffleKind { kShflIdx, kShflUp, kShflDown, kShflXor };

template <class T>
void resolve_shuffle(WarpOp* const* lanes, unsigned mask) {
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const WarpOp& op = *lanes[l];
    const int width = op.width, group = l & ~(width - 1);
    int src = l;
    switch (op.kind) {
      case kShflIdx: src = group + (op.arg & (width - 1)); break;
      case kShflUp: src = l - op.arg >= group ? l - op.arg : l; break;
      case kShflDown: src = l + op.arg < group + width ? l + op.arg : l; break;
      case kShflXor: src = (l ^ op.arg) < group + width ? (l ^ op.arg) : l; break;
    }
    if (src < 0 || src > 31 || !lanes[src]) {
      fault(cudaErrorLaunchFailure, "%s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x", op.what,
            op.file, op.line, l, src, mask);
    }
    std::memcpy(op.out, lanes[src]->in, sizeof(T));
  }
}

template <class T>
T shuffle(const char* what, ShuffleKind kind, unsigned mask, const T& var, int arg, int width, const char* file,
          int line) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be trivially copyable");
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fault(cudaErrorLaunchFailure, "%s at %s:%d: width %d is not a power of two <= 32", what, file, line, width);
  }
  T result;
  WarpOp op{what, file, line, mask, &resolve_shuffle<T>, kind, arg, width, &var, &result};
  warp_sync(op);
  return result;
}

enum VoteKind { kVoteAll, kVoteAny, kVoteBallot };
void resolve_vote(WarpOp* const* lanes, unsigned mask);
inline unsigned vote(const char* what, VoteKind kind, unsigned mask, int predicate, const char* file, int line) {
  const int pred = predicate != 0;
  unsigned result = 0;
  WarpOp op{what, file, line, mask, &resolve_vote, kind, 0, 32, &pred, &result};
  warp_sync(op);
  return result;
}
inline void resolve_nothing(WarpOp* const*, unsigned) {}

}  // namespace txn_emu

// ---------------------------------------------------------------- builtin variables and constants
#define threadIdx (static_cast<const uint3&>(::txn_emu::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::txn_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::txn_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::txn_emu::g_grid_dim))
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------- synchronisation
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::txn_emu::block_sync("__syncthreads", file, line, 0, 0);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::txn_emu::block_sync("__syncthreads_count", file, line, pred, 1);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::txn_emu::block_sync("__syncthreads_and", file, line, pred, 2);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::txn_emu::block_sync("__syncthreads_or", file, line, pred, 3);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::txn_emu::WarpOp op{"__syncwarp", file, line, mask, &::txn_emu::resolve_nothing, 0, 0, 32, nullptr, nullptr};
  ::txn_emu::warp_sync(op);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
[[noreturn]] inline void __trap() { ::txn_emu::fault(cudaErrorAssert, "__trap() called"); }

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return ::txn_emu::shuffle("__shfl_sync", ::txn_emu::kShflIdx, mask, var, src_lane, width, file, line);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  return ::txn_emu::shuffle("__shfl_up_sync", ::txn_emu::kShflUp, mask, var, static_cast<int>(delta), width, file,
                            line);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  return ::txn_emu::shuffle("__shfl_down_sync", ::txn_emu::kShflDown, mask, var, static_cast<int>(delta), width, file,
                            line);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  return ::txn_emu::shuffle("__shfl_xor_sync", ::txn_emu::kShflXor, mask, var, lane_mask, width, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::txn_emu::vote("__all_sync", ::txn_emu::kVoteAll, mask, pred, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::txn_emu::vote("__any_sync", ::txn_emu::kVoteAny, mask, pred, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return ::txn_emu::vote("__ballot_sync", ::txn_emu::kVoteBallot, mask, pred, file, line);
}

// ---------------------------------------------------------------- memory
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
// Atomics: a thread is never interrupted inside one (cooperative fibers), so plain read-modify-writes are atomic.
template <class T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicSub(T* p, T v) {
  const T old = *p;
  *p = old - v;
  return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <class T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}

// ---------------------------------------------------------------- math (fast intrinsics map to the libm functions)
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x > 1.f ? 1.f : (x > 0.f ? x : 0.f); }  // NaN -> 0
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline int __float_as_int(float x) {
  int r;
  std::memcpy(&r, &x, 4);
  return r;
}
inline unsigned __float_as_uint(float x) {
  unsigned r;
  std::memcpy(&r, &x, 4);
  return r;
}
inline float __int_as_float(int x) {
  float r;
  std::memcpy(&r, &x, 4);
  return r;
}
inline float __uint_as_float(unsigned x) {
  float r;
  std::memcpy(&r, &x, 4);
  return r;
}
inline long long __double_as_longlong(double x) {
  long long r;
  std::memcpy(&r, &x, 8);
  return r;
}
inline double __longlong_as_double(long long x) {
  double r;
  std::memcpy(&r, &x, 8);
  return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline int __mul24(int a, int b) { return a * b; }
inline unsigned __umul24(unsigned a, unsigned b) { return a * b; }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
// CUDA's global min/max overloads (integers and floating point, mixed types promoted like CUDA's).
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(static_cast<C>(a), static_cast<C>(b));  // fminf
  else return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(static_cast<C>(a), static_cast<C>(b));  // fmaxf
  else return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a < b ? b : a; }
