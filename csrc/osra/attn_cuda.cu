// OSRA attention on CUDA: out = softmax(scale q k^T + bias) v with its lse, and the backward, for tiny key sets
// (TransXNet: M = 49) as well as large ones (detection: M ~ 1024). Kernels: attn_forward.cuh, attn_backward.cuh;
// this file plans and launches them.
//
// Common ground. WMMA only (CUDA_RULES): bf16/fp16 m16n16k16, fp32 as 3xTF32 (attn_mma.cuh) - no IEEE dots on CUDA
// cores. A block is 4 warps on 64-row query tiles; warp w owns rows [16w, 16w + 16) from the scores to the
// outputs. Head dims are padded to 16 (24 -> 32) with zero columns and, like the key chunk KC, are runtime values:
// one instantiation per dtype and kernel, nothing sized by the head dim in registers. Row-wise values (max, lse,
// delta, 1/l) are made by plain threads in shared memory and enter fragment math as row-broadcast 16x16 tiles, so
// fragments are only ever touched element-wise.
//
// Forward. Keys come in chunks of KC. When all fit (M <= 256 and half an SM's shared memory; TransXNet: KC = 64)
// there is one chunk, staged once per block for several query tiles, and no rescaling. Per tile: S = q k^T on tensor
// cores into fp32 shared memory; one thread pass applies scale and bias (staged as stored, 16-byte loads), masks
// and takes the row max; P = 2^(s - max) on fragments, written over S in the input type with its row sums taken on
// the way; out = P V / l on tensor cores, straight to global memory. Several chunks: online softmax, O in fp32
// shared memory rescaled by a row-broadcast alpha tile.
//
// Backward: one pass per block = (batch chunk, h, query chunk of T <= 2 tiles, key chunk).
//   for b in the batch chunk:                   dK, dV of (b, h): WMMA accumulators in registers
//     stage K, V of b
//     for each tile of the query chunk:         dbias of the query chunk: WMMA accumulators in registers
//       stage q, dO, out and sb = (bias - lse) * log2(e); delta = rowsum(dO * out), in-kernel
//       P = 2^(scale log2(e) q k^T + sb), dS = P (dO v^T - delta): on fragments, no score round trip
//       dbias += dS; dq = scale dS K, written directly (one key chunk); dK += dS^T q; dV += P^T dO
//     write dK, dV of b: in the output type when the query chunk is all of N, else as an fp32 partial
//   write the dbias of the query chunk as an fp32 partial of its batch chunk
// Loop order: the two reductions run over different axes (dK/dV over queries, dbias over the batch), so one of
// them must survive the inner loop. With b outer, K and V are staged once per b and dK/dV of that b stay in
// registers across its tiles; the dbias of the query chunk (T x KC/16 fragments per warp) then stays in registers
// across the whole batch chunk. No accumulator is ever read back from memory; each block writes its partials once.
// With tiles outer instead, either dK/dV of every b in the chunk would have to stay on chip or be re-read per tile.
// The plan (plan_backward) picks T and the batch chunk so the grid fills the GPU (>= max(2, resident blocks per SM)
// x SMs blocks; the SM count and shared-memory limit are read from the current device at call time) with the least
// partial traffic, q_chunks * B*H*M*D*8 + b_chunks * H*N*M*4 bytes. TransXNet T1 in bf16 on 132 SMs: T = 2, 25 query
// chunks x 16 batch chunks = 400 blocks (3 per SM: one wave), 30 + 10 MB of partials. Reduction kernels sum them
// in a fixed order (deterministic, no atomics) and cast. Large M (several key chunks) or partials beyond
// max(256 MiB, 2 x q's bytes) switch to passes of the same kernel - dK/dV with long query chunks, dbias with
// whole-batch chunks - plus attn_dq_kernel, which loops over the key chunks of one query tile.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <mutex>
#include <type_traits>

#include "cuda_utils.cuh"
#include "osra/attn_backward.cuh"
#include "osra/attn_forward.cuh"
#include "osra/attn_launch.h"

namespace transxnet_ops {
namespace attn {
namespace {

constexpr int kMaxAllKeys = 256;  // the forward stages all keys at once up to this M

struct Device {
  int id = 0;
  int sms = 1;
  int smem_optin = 48 * 1024;
};

// The current device, asked at every call (never at import).
cudaError_t query_device(Device* dev) {
  cudaError_t err = cudaGetDevice(&dev->id);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&dev->sms, cudaDevAttrMultiProcessorCount, dev->id);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&dev->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev->id);
  }
  return err;
}

constexpr int kMaxDevices = 64;  // per-device caches below; devices past it ask the runtime every time

// Raises Kernel's dynamic shared-memory limit to `bytes` on the device once (the largest asked so far).
template <auto Kernel>
cudaError_t allow_smem(const Device& dev, size_t bytes) {
  static std::mutex mutex;
  static int allowed[kMaxDevices] = {};
  if (bytes <= 48 * 1024) return cudaSuccess;
  const std::lock_guard<std::mutex> lock(mutex);
  if (dev.id < kMaxDevices && allowed[dev.id] >= static_cast<int>(bytes)) return cudaSuccess;
  const cudaError_t err =
      cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess && dev.id < kMaxDevices) allowed[dev.id] = static_cast<int>(bytes);
  return err;
}

// Registers per thread of Kernel's binary for the device, asked once.
template <auto Kernel>
cudaError_t kernel_registers(const Device& dev, int* regs) {
  static std::atomic<int> known[kMaxDevices] = {};
  if (dev.id < kMaxDevices && (*regs = known[dev.id].load(std::memory_order_relaxed)) > 0) return cudaSuccess;
  cudaFuncAttributes attr{};
  const cudaError_t err = cudaFuncGetAttributes(&attr, Kernel);
  *regs = attr.numRegs;
  if (err == cudaSuccess && dev.id < kMaxDevices) known[dev.id].store(attr.numRegs, std::memory_order_relaxed);
  return err;
}

int padded_head_dim(int64_t D) { return round_up(static_cast<int>(std::max<int64_t>(D, 1)), 16); }

// Shared memory of a block, in bytes, and how many such blocks an SM holds (228 KB per SM on sm_90 = opt-in + 1 KB).
int blocks_per_sm(size_t smem, const Device& dev, int regs_per_thread) {
  const size_t per_sm = static_cast<size_t>(dev.smem_optin) + 1024;
  int by_smem = static_cast<int>(per_sm / (smem + 1024));
  int by_regs = regs_per_thread > 0 ? 65536 / (regs_per_thread * kThreads) : 16;
  return std::max(1, std::min({by_smem, by_regs, 16}));
}


// How long a launch takes relative to a perfect spread of its work over the GPU's block slots: blocks run in
// waves of `slots`, each wave as long as its largest block (`max_work` units of `total_work`). >= 1.
double makespan_factor(int64_t blocks, int64_t max_work, int64_t total_work, int64_t slots) {
  const int64_t waves = (blocks + slots - 1) / slots;
  return std::max(1.0, static_cast<double>(waves) * max_work * slots / static_cast<double>(total_work));
}

// Chunk sizes worth trying for `n` items: every size that changes the chunk count, ~2 sqrt(n) of them, from 1 up.
template <typename Fn>
void for_each_chunk_size(int64_t n, int64_t max_size, Fn&& fn) {
  for (int64_t size = 1; size <= std::min(n, max_size);) {
    fn(size);
    const int64_t chunks = (n + size - 1) / size;
    if (chunks == 1) break;
    size = (n + chunks - 2) / (chunks - 1);  // the smallest size with one chunk fewer
  }
}

struct ForwardPlan {
  int Dp = 0, KC = 0, tiles_per_block = 1;
  int64_t groups = 1;
  size_t smem = 0;
};

// One chunk of all keys when they fit half an SM's shared memory (two blocks per SM), else the largest chunk that
// does (online softmax). With one chunk a block can reuse its staged K, V over several query tiles: the count that
// gives the shortest makespan, preferring more reuse on ties.
bool plan_forward(const AttnShape& s, int eb, const Device& dev, int regs_per_thread, ForwardPlan* p) {
  p->Dp = padded_head_dim(s.D);
  const int Mp = round_up(static_cast<int>(std::min<int64_t>(s.M, kMaxAllKeys + 1)), 16);
  const size_t budget = std::max<size_t>(48 * 1024, (static_cast<size_t>(dev.smem_optin) + 1024) / 2 - 1024);
  auto bytes = [&](int KC) { return forward_smem(make_geometry(p->Dp, KC, eb), eb, KC < s.M).bytes; };
  p->KC = 0;
  if (s.M <= kMaxAllKeys && bytes(Mp) <= budget) p->KC = Mp;
  for (int KC : {128, 64, 32, 16}) {
    if (p->KC == 0 && KC < Mp && bytes(KC) <= budget) p->KC = KC;
  }
  if (p->KC == 0) p->KC = 16;
  p->smem = bytes(p->KC);
  if (p->smem > static_cast<size_t>(dev.smem_optin)) return false;
  const int64_t tiles = (s.N + kTileRows - 1) / kTileRows;
  const int64_t slots = static_cast<int64_t>(dev.sms) * blocks_per_sm(p->smem, dev, regs_per_thread);
  double best = -1;
  for_each_chunk_size(tiles, s.M <= p->KC ? 16 : 1, [&](int64_t per_block) {
    const int64_t groups = (tiles + per_block - 1) / per_block;
    const double t = makespan_factor(s.B * s.H * groups, per_block, s.B * s.H * tiles, slots);
    if (best < 0 || t <= best) {
      best = t;
      p->tiles_per_block = static_cast<int>(per_block);
      p->groups = groups;
    }
  });
  return s.B * s.H * p->groups <= INT_MAX;
}

// One launch of attn_backward_kernel.
struct BackwardPass {
  bool dq = false, dkv = false, dbias = false;
  int tiles_per_qchunk = 1, batch_per_chunk = 1;
  int64_t q_chunks = 1, b_chunks = 1;
  int64_t blocks(const AttnShape& s, int64_t key_chunks) const { return b_chunks * s.H * q_chunks * key_chunks; }
};

struct BackwardPlan {
  int Dp = 0, KC = 0;
  int64_t key_chunks = 1;
  size_t smem = 0;
  bool dq_kernel = false;  // dq by attn_dq_kernel (several key chunks)
  int passes = 0;
  BackwardPass pass[2];
  int64_t dkv_floats = 0, dbias_floats = 0;  // workspace: dK/dV partials, then dbias partials
};

// Choose the key chunk, the passes and their chunk counts by a cost in byte-equivalents (HBM at ~4 TB/s):
// - a pass recomputes every score (~40 instructions per score and thread: about the time of moving 8 bytes) and
//   reads q, grad_out and out once per key chunk, stretched by makespan_factor over the resident block slots;
// - fp32 partials are written and read back once.
// The workspace stays under max(256 MiB, 2 x q's bytes) whenever a plan allows: at detection sizes the fused pass
// would need gigabytes of dK/dV partials, and the work splits into a dK/dV pass and a dbias pass instead.
bool plan_backward(const AttnShape& s, int eb, bool want_dbias, const Device& dev, int regs_per_thread,
                   BackwardPlan* p) {
  p->Dp = padded_head_dim(s.D);
  const int Mp = round_up(static_cast<int>(std::min<int64_t>(s.M, 1 << 20)), 16);
  // Key chunks of at most 64 keys whose dK + dV tiles fit the warps' accumulators.
  const int max_kc_by_frags = std::min(16 * kMaxKeyTiles, kMaxDkvFrags * kWarps * 16 * 16 / (2 * p->Dp));
  auto bytes = [&](int KC) { return backward_smem(make_geometry(p->Dp, KC, eb), eb).bytes; };
  p->KC = 0;
  if (Mp <= max_kc_by_frags && bytes(Mp) <= static_cast<size_t>(dev.smem_optin)) p->KC = Mp;
  for (int KC : {64, 32, 16}) {
    if (p->KC == 0 && KC < Mp && KC <= max_kc_by_frags && bytes(KC) <= static_cast<size_t>(dev.smem_optin)) {
      p->KC = KC;
    }
  }
  if (p->KC == 0) return false;
  p->smem = bytes(p->KC);
  p->key_chunks = (s.M + p->KC - 1) / p->KC;
  p->dq_kernel = p->key_chunks > 1;
  const int64_t tiles = (s.N + kTileRows - 1) / kTileRows;
  const int64_t slots = static_cast<int64_t>(dev.sms) * blocks_per_sm(p->smem, dev, regs_per_thread);
  const int64_t cap = std::max<int64_t>(int64_t(64) << 20, s.B * s.H * s.N * s.D * eb / 2);  // floats
  const int64_t kv_floats = 2 * s.B * s.H * s.M * s.D;  // one dK + dV partial
  const int64_t bias_floats = s.H * s.N * s.M;          // one dbias partial
  const int64_t work = s.B * s.H * tiles * p->key_chunks;  // (b, h, tile, key chunk) steps of a pass
  const double pass_bytes = static_cast<double>(s.B) * s.H * s.N * p->key_chunks * (3.0 * eb * s.D + 8.0 * p->KC);
  const bool per_batch_bias = want_dbias && s.Bb > 1;  // every batch has its own dbias slice: chunks of one

  struct Cost {
    double bytes = -1;
    int64_t workspace = 0;
  };
  auto pass_cost = [&](const BackwardPass& q) {
    Cost c;
    const int64_t max_work = static_cast<int64_t>(q.tiles_per_qchunk) * q.batch_per_chunk;
    c.workspace = (q.dkv && q.q_chunks > 1 ? q.q_chunks * kv_floats : 0) + (q.dbias ? q.b_chunks * bias_floats : 0);
    c.bytes = pass_bytes * makespan_factor(q.blocks(s, p->key_chunks), max_work, work, slots) + 8.0 * c.workspace;
    return c;
  };
  // Within the workspace cap first, then fewer byte-equivalents.
  auto better = [&](const Cost& a, const Cost& b) {
    if (b.bytes < 0) return true;
    if ((a.workspace <= cap) != (b.workspace <= cap)) return a.workspace <= cap;
    return a.bytes < b.bytes;
  };
  // The best pass with the given outputs over query chunks of up to max_tiles tiles and any batch chunk size.
  auto best_pass = [&](bool dkv, bool dbias, int64_t max_tiles, BackwardPass* out) {
    Cost best;
    for_each_chunk_size(tiles, max_tiles, [&](int64_t t) {
      for_each_chunk_size(s.B, dbias && per_batch_bias ? 1 : s.B, [&](int64_t per_chunk) {
        BackwardPass q;
        q.dkv = dkv;
        q.dbias = dbias;
        q.tiles_per_qchunk = static_cast<int>(t);
        q.q_chunks = (tiles + t - 1) / t;
        q.batch_per_chunk = static_cast<int>(per_chunk);
        q.b_chunks = (s.B + per_chunk - 1) / per_chunk;
        const Cost c = pass_cost(q);
        if (better(c, best)) {
          best = c;
          *out = q;
        }
      });
    });
    return best;
  };

  // Fused: one pass; the dbias of a query chunk (at most kMaxDbiasTiles tiles) is held in registers.
  BackwardPass fused;
  Cost best = best_pass(true, want_dbias, want_dbias ? kMaxDbiasTiles : tiles, &fused);
  p->passes = 1;
  p->pass[0] = fused;
  // Split: a dK/dV pass with query chunks as long as it likes, and a dbias pass over single tiles.
  if (want_dbias) {
    BackwardPass kv, db;
    const Cost a = best_pass(true, false, tiles, &kv), b = best_pass(false, true, 1, &db);
    const Cost split{a.bytes + b.bytes, a.workspace + b.workspace};
    if (better(split, best)) {
      p->passes = 2;
      p->pass[0] = kv;
      p->pass[1] = db;
    }
  }
  p->pass[0].dq = !p->dq_kernel;
  p->dkv_floats = 0;
  p->dbias_floats = 0;
  for (int i = 0; i < p->passes; ++i) {
    const BackwardPass& q = p->pass[i];
    if (q.blocks(s, p->key_chunks) > INT_MAX) return false;
    if (q.dkv && q.q_chunks > 1) p->dkv_floats = q.q_chunks * kv_floats;
    if (q.dbias) p->dbias_floats = q.b_chunks * bias_floats;
  }
  return !p->dq_kernel || s.B * s.H * tiles <= INT_MAX;
}

template <typename T>
cudaError_t make_backward_plan(const Device& dev, const AttnShape& s, bool want_dbias, BackwardPlan* plan) {
  int regs = 0;
  const cudaError_t err = kernel_registers<attn_backward_kernel<T>>(dev, &regs);
  if (err != cudaSuccess) return err;
  return plan_backward(s, sizeof(T), want_dbias, dev, regs, plan) ? cudaSuccess : cudaErrorInvalidValue;
}

int reduce_blocks(int64_t size, int sms) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((size + kReduceThreads - 1) / kReduceThreads,
                                                                 32 * static_cast<int64_t>(sms))));
}

template <typename T>
cudaError_t forward(const T* q, const T* k, const T* v, const T* bias, T* out, float* lse, const AttnShape& s,
                    float scale, cudaStream_t stream) {
  Device dev;
  cudaError_t err = query_device(&dev);
  if (err != cudaSuccess) return err;
  int regs = 0;
  if ((err = kernel_registers<attn_forward_kernel<T>>(dev, &regs)) != cudaSuccess) return err;
  ForwardPlan plan;
  if (!plan_forward(s, sizeof(T), dev, regs, &plan)) return cudaErrorInvalidConfiguration;
  err = allow_smem<attn_forward_kernel<T>>(dev, plan.smem);
  if (err != cudaSuccess) return err;
  ForwardArgs<T> args;
  args.q = q, args.k = k, args.v = v, args.bias = bias, args.out = out, args.lse = lse;
  args.B = s.B, args.H = s.H, args.N = s.N, args.M = s.M, args.D = s.D, args.Bb = s.Bb, args.Hb = s.Hb;
  args.scale = scale;
  args.Dp = plan.Dp, args.KC = plan.KC, args.tiles_per_block = plan.tiles_per_block, args.groups = plan.groups;
  const unsigned blocks = static_cast<unsigned>(s.B * s.H * plan.groups);
  attn_forward_kernel<T><<<blocks, kThreads, plan.smem, stream>>>(args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const T* dout, const T* q, const T* k, const T* v, const T* bias, const T* out,
                     const float* lse, float* workspace, T* dq, T* dk, T* dv, T* dbias, const AttnShape& s,
                     float scale, cudaStream_t stream) {
  Device dev;
  BackwardPlan plan;
  cudaError_t err = query_device(&dev);
  if (err == cudaSuccess) err = make_backward_plan<T>(dev, s, dbias != nullptr, &plan);
  if (err != cudaSuccess) return err;
  float* dkv_partial = plan.dkv_floats > 0 ? workspace : nullptr;
  float* dbias_partial = plan.dbias_floats > 0 ? workspace + plan.dkv_floats : nullptr;
  if ((err = allow_smem<attn_backward_kernel<T>>(dev, plan.smem)) != cudaSuccess) return err;

  BackwardArgs<T> args{};
  args.q = q, args.k = k, args.v = v, args.bias = bias, args.dout = dout, args.out = out, args.lse = lse;
  args.B = s.B, args.H = s.H, args.N = s.N, args.M = s.M, args.D = s.D, args.Bb = s.Bb, args.Hb = s.Hb;
  args.scale = scale;
  args.Dp = plan.Dp, args.KC = plan.KC, args.key_chunks = plan.key_chunks;
  args.tiles_per_qchunk = 1, args.q_chunks = 1, args.batch_per_chunk = 1, args.b_chunks = 1;
  if (plan.dq_kernel) {
    if ((err = allow_smem<attn_dq_kernel<T>>(dev, plan.smem)) != cudaSuccess) return err;
    args.dq = dq;
    const unsigned blocks = static_cast<unsigned>(s.B * s.H * ((s.N + kTileRows - 1) / kTileRows));
    attn_dq_kernel<T><<<blocks, kThreads, plan.smem, stream>>>(args);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  for (int i = 0; i < plan.passes; ++i) {
    const BackwardPass& p = plan.pass[i];
    args.dq = p.dq ? dq : nullptr;
    args.dk = p.dkv && p.q_chunks == 1 ? dk : nullptr;
    args.dv = p.dkv && p.q_chunks == 1 ? dv : nullptr;
    args.dkv_partial = p.dkv && p.q_chunks > 1 ? dkv_partial : nullptr;
    args.dbias_partial = p.dbias ? dbias_partial : nullptr;
    args.tiles_per_qchunk = p.tiles_per_qchunk;
    args.q_chunks = p.q_chunks;
    args.batch_per_chunk = p.batch_per_chunk;
    args.b_chunks = p.b_chunks;
    const unsigned blocks = static_cast<unsigned>(p.blocks(s, plan.key_chunks));
    attn_backward_kernel<T><<<blocks, kThreads, plan.smem, stream>>>(args);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (p.dkv && p.q_chunks > 1) {
      const int64_t size = s.B * s.H * s.M * s.D;
      attn_reduce_dkv_kernel<T><<<reduce_blocks(size, dev.sms), kReduceThreads, 0, stream>>>(dkv_partial, dk, dv,
                                                                                            size, p.q_chunks);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (p.dbias) {
      const int64_t size = s.Bb * s.Hb * s.N * s.M;
      attn_reduce_dbias_kernel<T><<<reduce_blocks(size, dev.sms), kReduceThreads, 0, stream>>>(
          dbias_partial, dbias, s.Bb, s.Hb, s.H, s.N * s.M, p.b_chunks);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace attn

cudaError_t osra_cuda_forward(DType dtype, const void* q, const void* k, const void* v, const void* bias, void* out,
                              float* lse, const AttnShape& s, float scale, cudaStream_t stream) {
  if (s.B * s.H * s.N == 0) return cudaSuccess;
  if (s.M < 1 || s.D < 1 || s.D > kMaxCudaHeadDim) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return attn::forward<T>(static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                            static_cast<const T*>(bias), static_cast<T*>(out), lse, s, scale, stream);
  });
}

int64_t osra_cuda_backward_workspace(DType dtype, const AttnShape& s, bool want_grad_bias) {
  if (s.B * s.H * s.N == 0 || s.M < 1 || s.D < 1 || s.D > kMaxCudaHeadDim) return 0;
  attn::Device dev;
  attn::BackwardPlan plan;
  const cudaError_t err = dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const cudaError_t e = attn::query_device(&dev);
    return e == cudaSuccess ? attn::make_backward_plan<T>(dev, s, want_grad_bias, &plan) : e;
  });
  return err == cudaSuccess ? plan.dkv_floats + plan.dbias_floats : 0;
}

cudaError_t osra_cuda_backward(DType dtype, const void* grad_out, const void* q, const void* k, const void* v,
                               const void* bias, const void* out, const float* lse, float* workspace, void* grad_q,
                               void* grad_k, void* grad_v, void* grad_bias, const AttnShape& s, float scale,
                               cudaStream_t stream) {
  if (s.B * s.H * s.N == 0) return cudaSuccess;
  if (s.M < 1 || s.D < 1 || s.D > kMaxCudaHeadDim) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return attn::backward<T>(static_cast<const T*>(grad_out), static_cast<const T*>(q), static_cast<const T*>(k),
                             static_cast<const T*>(v), static_cast<const T*>(bias), static_cast<const T*>(out), lse,
                             workspace, static_cast<T*>(grad_q), static_cast<T*>(grad_k), static_cast<T*>(grad_v),
                             static_cast<T*>(grad_bias), s, scale, stream);
  });
}

}  // namespace transxnet_ops
