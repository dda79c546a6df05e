// The OSRA attention backward kernels and the reductions of their partial sums (design: attn_cuda.cu).
#pragma once
#include <cmath>

#include "osra/attn_mma.cuh"
#include "osra/attn_strip.cuh"
#include "osra/attn_tile.cuh"

namespace transxnet_ops {
namespace attn {

constexpr int kMaxDkvFrags = 4;    // WMMA accumulators per warp for dK/dV: KC * Dp <= 2048
constexpr int kMaxDbiasTiles = 2;  // query tiles whose dbias a backward block holds (KC <= 64: 8 accumulators)
constexpr int kReduceThreads = 256;

template <typename T>
struct BackwardArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* bias;
  const T* dout;
  const T* out;
  const float* lse;
  T* dq;                // written here (a single key chunk), or null
  T* dk;                // dK, dV in the output type when the query chunk is all of N
  T* dv;
  float* dkv_partial;   // else [q_chunks][B*H*M*D] for dK, then the same for dV; null: no dK/dV in this pass
  float* dbias_partial; // [b_chunks][H][N][M], or null: no dbias in this pass
  int64_t B, H, N, M, D, Bb, Hb;
  float scale;
  int Dp, KC;
  int64_t key_chunks;
  int tiles_per_qchunk;
  int64_t q_chunks;
  int batch_per_chunk;
  int64_t b_chunks;
};

// The shared-memory tiles of a backward block.
template <typename T>
struct BackwardTiles {
  T *k, *v, *q, *dout;
  float* s;    // staged (bias - lse) * log2(e), then P in T over it (stride lds, or lds_as_t elements of T)
  T* ds;       // dS in T (stride ld_ds)
  float* dq;   // dq rows in fp32 (stride ldo); the out tile is staged in them first, as T (stride ld_out)
  float* scratch;
  float* delta;
  int lds_as_t, ld_out;

  __device__ BackwardTiles(unsigned char* smem, const Geometry& g) {
    const BackwardSmem L = backward_smem(g, sizeof(T));
    k = reinterpret_cast<T*>(smem + L.k);
    v = reinterpret_cast<T*>(smem + L.v);
    q = reinterpret_cast<T*>(smem + L.q);
    dout = reinterpret_cast<T*>(smem + L.dout);
    s = reinterpret_cast<float*>(smem + L.s);
    ds = reinterpret_cast<T*>(smem + L.ds);
    dq = reinterpret_cast<float*>(smem + L.dq);
    scratch = reinterpret_cast<float*>(smem + L.scratch);
    delta = reinterpret_cast<float*>(smem + L.delta);
    lds_as_t = g.lds * static_cast<int>(sizeof(float) / sizeof(T));
    // Same byte stride as the dq rows: each warp reads its strip of out before writing those bytes with its dq.
    ld_out = g.ldo * static_cast<int>(sizeof(float) / sizeof(T));
  }
  __device__ T* out() const { return reinterpret_cast<T*>(dq); }
};

// Stage the rows [n0, n0 + 64) of (b, h) = bh for keys [m0, m0 + kvalid): q, grad_out and out (zero rows past N),
// and (bias - lse) * log2(e) in S. Block-wide; the caller synchronises.
template <typename T>
__device__ __forceinline__ void stage_backward_tile(const BackwardArgs<T>& a, const BackwardTiles<T>& sm,
                                                    const Geometry& g, const T* bias_bh, int64_t bh, int64_t n0,
                                                    int64_t m0, int rows, int kvalid, int tid) {
  const int64_t row0 = bh * a.N + n0;
  const int D = static_cast<int>(a.D);
  load_rows(sm.q, g.ldx, a.q + row0 * a.D, rows, D, tid, kThreads);
  load_rows(sm.dout, g.ldx, a.dout + row0 * a.D, rows, D, tid, kThreads);
  load_rows(sm.out(), sm.ld_out, a.out + row0 * a.D, rows, D, tid, kThreads);
  if (rows < kTileRows) {  // rows past N must not carry a previous tile's values into dK/dV
    zero_rows(sm.q, g.ldx, rows, kTileRows, g.Dp, tid, kThreads);
    zero_rows(sm.dout, g.ldx, rows, kTileRows, g.Dp, tid, kThreads);
    zero_rows(sm.out(), sm.ld_out, rows, kTileRows, D, tid, kThreads);
  }
  stage_bias_tile(sm.s, g.lds, bias_bh ? bias_bh + n0 * a.M + m0 : nullptr, a.M, a.lse + row0, kLog2e, rows, a.KC,
                  kvalid, tid, kThreads);
}

// Stage rows [m0, m0 + kvalid) of k and v (zero rows after them up to KC when `zero_tail`).
template <typename T>
__device__ __forceinline__ void stage_keys(const T* k, const T* v, const BackwardTiles<T>& sm, const Geometry& g,
                                           int kvalid, int D, bool zero_tail, int tid) {
  load_rows(sm.k, g.ldx, k, kvalid, D, tid, kThreads);
  load_rows(sm.v, g.ldx, v, kvalid, D, tid, kThreads);
  if (zero_tail && kvalid < g.KC) {
    zero_rows(sm.k, g.ldx, kvalid, g.KC, g.Dp, tid, kThreads);
    zero_rows(sm.v, g.ldx, kvalid, g.KC, g.Dp, tid, kThreads);
  }
}

// dK, dV and dbias partials (and dq, with a single key chunk) of one (batch chunk, h, query chunk, key chunk) per
// block: b outer, the chunk's tiles inner (see attn_cuda.cu). Pass flags: dq / dk, dv or dkv_partial / dbias_partial
// null when this pass does not produce them.
template <typename T>
__global__ void __launch_bounds__(kThreads, 3) attn_backward_kernel(const BackwardArgs<T> a) {
  TXN_DYNAMIC_SMEM(unsigned char, smem_raw);
  unsigned char* smem = align_smem(smem_raw);
  const Geometry g = make_geometry(a.Dp, a.KC, sizeof(T));
  const BackwardTiles<T> sm(smem, g);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  zero_smem(smem, backward_smem(g, sizeof(T)).bytes - kSmemAlign, tid, kThreads);

  // blockIdx.x = ((bc * H + h) * q_chunks + qc) * key_chunks + kc
  int64_t idx = blockIdx.x;
  const int64_t kc = idx % a.key_chunks;
  idx /= a.key_chunks;
  const int64_t qc = idx % a.q_chunks;
  idx /= a.q_chunks;
  const int64_t h = idx % a.H, bc = idx / a.H;
  const int64_t m0 = kc * a.KC;
  const int kvalid = clamp_rows(a.M - m0, a.KC);
  const int64_t tiles = (a.N + kTileRows - 1) / kTileRows;
  const int64_t t_begin = qc * a.tiles_per_qchunk;
  const int ntiles = clamp_rows(tiles - t_begin, a.tiles_per_qchunk);
  const int64_t b_begin = bc * a.batch_per_chunk;
  const int64_t b_end = b_begin + a.batch_per_chunk < a.B ? b_begin + a.batch_per_chunk : a.B;
  const int key_tiles = a.KC / 16, d_tiles = g.Dp / 16, kv_tiles = key_tiles * d_tiles;
  const bool want_dkv = a.dkv_partial != nullptr || a.dk != nullptr;
  const bool want_dbias = a.dbias_partial != nullptr;
  const float scale2 = a.scale * kLog2e;
  float* scratch = sm.scratch + 256 * warp;
  float* delta = sm.delta + 256 * warp;
  const T* Qs = sm.q + 16 * warp * g.ldx;
  const T* dOs = sm.dout + 16 * warp * g.ldx;

  AccFrag<T> dbias[kMaxDbiasTiles][kMaxKeyTiles];  // [tile of the query chunk][key tile] of the warp's strips
#pragma unroll
  for (int t = 0; t < kMaxDbiasTiles; ++t) {
#pragma unroll
    for (int j = 0; j < kMaxKeyTiles; ++j) wmma::fill_fragment(dbias[t][j], 0.f);
  }
  __syncthreads();

  for (int64_t b = b_begin; b < b_end; ++b) {
    const int64_t bh = b * a.H + h;
    const T* bias_bh = a.bias ? a.bias + bias_slice_offset(b, h, a.Bb, a.Hb, a.N, a.M) : nullptr;
    // Rows past kvalid stay zero: kvalid is the same for every b of the block.
    stage_keys(a.k + (bh * a.M + m0) * a.D, a.v + (bh * a.M + m0) * a.D, sm, g, kvalid, static_cast<int>(a.D), false,
               tid);
    AccFrag<T> dkv[kMaxDkvFrags];  // fragment f: output tile warp + 4f of [dK tiles..., dV tiles...]
#pragma unroll
    for (int f = 0; f < kMaxDkvFrags; ++f) wmma::fill_fragment(dkv[f], 0.f);

    for (int t = 0; t < ntiles; ++t) {
      const int64_t n0 = (t_begin + t) * kTileRows, row0 = bh * a.N + n0;
      const int rows = clamp_rows(a.N - n0, kTileRows);
      stage_backward_tile(a, sm, g, bias_bh, bh, n0, m0, rows, kvalid, tid);
      __syncthreads();

      delta_tile_strip(delta, dOs, g.ldx, sm.out() + 16 * warp * sm.ld_out, sm.ld_out, static_cast<int>(a.D), lane);
      backward_strip<T>(sm.s + 16 * warp * g.lds, g.lds, sm.ds + 16 * warp * g.ld_ds, g.ld_ds, scratch, delta, Qs,
                        dOs, sm.k, sm.v, g, scale2, lane, [&](int j, const AccFrag<T>& ds) {
                          if (want_dbias) add_frag<T>(t == 0 ? dbias[0][j] : dbias[1][j], ds);
                        });
      const int strip_rows = clamp_rows(rows - 16 * warp, 16);
      if (a.dq != nullptr) {  // dq = scale dS K, complete: this block sees every key
        float* dQs = sm.dq + 16 * warp * g.ldo;
        #pragma unroll 1
        for (int d = 0; d < g.Dp; d += 16) {
          AccFrag<T> acc;
          wmma::fill_fragment(acc, 0.f);
          mma_accumulate<T, wmma::row_major, wmma::row_major>(acc, sm.ds + 16 * warp * g.ld_ds, g.ld_ds, sm.k + d,
                                                              g.ldx, a.KC);
          wmma::store_matrix_sync(dQs + d, acc, g.ldo, wmma::mem_row_major);
        }
        __syncwarp();
        if (strip_rows > 0) {
          store_rows(a.dq + (row0 + 16 * warp) * a.D, dQs, g.ldo, strip_rows, static_cast<int>(a.D), nullptr,
                     a.scale, lane);
        }
      }
      __syncthreads();  // P and dS of every strip are complete

      if (want_dkv) {  // dK += dS^T Q, dV += P^T dO over the tile's 64 rows
#pragma unroll 1
        for (int f = 0; f < kMaxDkvFrags && warp + kWarps * f < 2 * kv_tiles; ++f) {
          const int tile = warp + kWarps * f;
          const int kind = tile / kv_tiles, mi = (tile % kv_tiles) / d_tiles, di = tile % d_tiles;
          const T* lhs = kind == 0 ? sm.ds + 16 * mi : reinterpret_cast<const T*>(sm.s) + 16 * mi;  // dS^T, P^T
          const T* rhs = kind == 0 ? sm.q + 16 * di : sm.dout + 16 * di;
          const int ld_lhs = kind == 0 ? g.ld_ds : sm.lds_as_t;
          with_frag(dkv, f, [&](AccFrag<T>& acc) {
            mma_accumulate<T, wmma::col_major, wmma::row_major>(acc, lhs, ld_lhs, rhs, g.ldx, kTileRows);
          });
        }
      }
      __syncthreads();  // the next tile overwrites the staged rows, P and dS
    }

    if (want_dkv) {
      const int64_t kv_size = a.B * a.H * a.M * a.D;
#pragma unroll 1
      for (int f = 0; f < kMaxDkvFrags && warp + kWarps * f < 2 * kv_tiles; ++f) {
        const int tile = warp + kWarps * f;
        const int kind = tile / kv_tiles, mi = (tile % kv_tiles) / d_tiles, di = tile % d_tiles;
        const int rows = clamp_rows(kvalid - 16 * mi, 16), cols = clamp_rows(a.D - 16 * di, 16);
        const int64_t at = (bh * a.M + m0 + 16 * mi) * a.D + 16 * di;
        const float s = kind == 0 ? a.scale : 1.f;  // dK = scale dS^T Q
        with_frag(dkv, f, [&](AccFrag<T>& acc) { wmma::store_matrix_sync(scratch, acc, 16, wmma::mem_row_major); });
        if (a.q_chunks == 1) {
          write_scratch(scratch, (kind == 0 ? a.dk : a.dv) + at, a.D, rows, cols, s, lane);
        } else {
          write_scratch(scratch, a.dkv_partial + (kind * a.q_chunks + qc) * kv_size + at, a.D, rows, cols, s, lane);
        }
      }
    }
  }

  if (want_dbias) {
    float* part = a.dbias_partial + (bc * a.H + h) * a.N * a.M + m0;
#pragma unroll
    for (int t = 0; t < kMaxDbiasTiles; ++t) {
#pragma unroll
      for (int j = 0; j < kMaxKeyTiles; ++j) {
        if (t < ntiles && j < key_tiles) {
          const int64_t n = (t_begin + t) * kTileRows + 16 * warp;
          const int rows = clamp_rows(a.N - n, 16), cols = clamp_rows(kvalid - 16 * j, 16);
          wmma::store_matrix_sync(scratch, dbias[t][j], 16, wmma::mem_row_major);
          write_scratch(scratch, part + n * a.M + 16 * j, a.M, rows, cols, 1.f, lane);
        }
      }
    }
  }
}

// dq alone, for key sets split in chunks: a block owns one query tile and loops over the key chunks; dq
// accumulates in fp32 shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads, 4) attn_dq_kernel(const BackwardArgs<T> a) {
  TXN_DYNAMIC_SMEM(unsigned char, smem_raw);
  unsigned char* smem = align_smem(smem_raw);
  const Geometry g = make_geometry(a.Dp, a.KC, sizeof(T));
  const BackwardTiles<T> sm(smem, g);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  zero_smem(smem, backward_smem(g, sizeof(T)).bytes - kSmemAlign, tid, kThreads);

  const int64_t tiles = (a.N + kTileRows - 1) / kTileRows;
  const int64_t bh = blockIdx.x / tiles, b = bh / a.H, h = bh % a.H;
  const int64_t n0 = (blockIdx.x % tiles) * kTileRows, row0 = bh * a.N + n0;
  const int rows = clamp_rows(a.N - n0, kTileRows);
  const int strip_rows = clamp_rows(rows - 16 * warp, 16);
  const T* bias_bh = a.bias ? a.bias + bias_slice_offset(b, h, a.Bb, a.Hb, a.N, a.M) : nullptr;
  const float scale2 = a.scale * kLog2e;
  float* scratch = sm.scratch + 256 * warp;
  float* delta = sm.delta + 256 * warp;
  float* dQs = sm.dq + 16 * warp * g.ldo;
  const T* Qs = sm.q + 16 * warp * g.ldx;
  const T* dOs = sm.dout + 16 * warp * g.ldx;
  __syncthreads();

  for (int64_t c = 0; c < a.key_chunks; ++c) {
    const int64_t m0 = c * a.KC;
    const int kvalid = clamp_rows(a.M - m0, a.KC);
    if (c > 0) __syncthreads();  // every warp is done with the previous chunk
    stage_keys(a.k + (bh * a.M + m0) * a.D, a.v + (bh * a.M + m0) * a.D, sm, g, kvalid, static_cast<int>(a.D), true,
               tid);
    if (c == 0) {
      stage_backward_tile(a, sm, g, bias_bh, bh, n0, m0, rows, kvalid, tid);
    } else {
      stage_bias_tile(sm.s, g.lds, bias_bh ? bias_bh + n0 * a.M + m0 : nullptr, a.M, a.lse + row0, kLog2e, rows,
                      a.KC, kvalid, tid, kThreads);
    }
    __syncthreads();
    if (c == 0) {
      delta_tile_strip(delta, dOs, g.ldx, sm.out() + 16 * warp * sm.ld_out, sm.ld_out, static_cast<int>(a.D), lane);
    }
    backward_strip<T>(sm.s + 16 * warp * g.lds, g.lds, sm.ds + 16 * warp * g.ld_ds, g.ld_ds, scratch, delta, Qs, dOs,
                      sm.k, sm.v, g, scale2, lane, [](int, const AccFrag<T>&) {});
    #pragma unroll 1
    for (int d = 0; d < g.Dp; d += 16) {
      AccFrag<T> acc;
      if (c == 0) {
        wmma::fill_fragment(acc, 0.f);
      } else {
        wmma::load_matrix_sync(acc, dQs + d, g.ldo, wmma::mem_row_major);
      }
      mma_accumulate<T, wmma::row_major, wmma::row_major>(acc, sm.ds + 16 * warp * g.ld_ds, g.ld_ds, sm.k + d, g.ldx,
                                                          a.KC);
      wmma::store_matrix_sync(dQs + d, acc, g.ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (strip_rows > 0) {
    store_rows(a.dq + (row0 + 16 * warp) * a.D, dQs, g.ldo, strip_rows, static_cast<int>(a.D), nullptr, a.scale,
               lane);
  }
}

// dK = sum of the query-chunk partials (already scaled), dV likewise, in chunk order.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    attn_reduce_dkv_kernel(const float* __restrict__ partial, T* __restrict__ dk, T* __restrict__ dv, int64_t size,
                           int64_t chunks) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x; i < size;
       i += static_cast<int64_t>(gridDim.x) * kReduceThreads) {
    float sk = 0.f, sv = 0.f;
    for (int64_t c = 0; c < chunks; ++c) {
      sk += partial[c * size + i];
      sv += partial[(chunks + c) * size + i];
    }
    dk[i] = from_float<T>(sk);
    dv[i] = from_float<T>(sv);
  }
}

// grad_bias[bb, hb] = sum over the batch chunks and heads that map onto the (bb, hb) slice, in a fixed order.
// Partials are [b_chunks][H][N*M]; with a per-batch bias (Bb > 1) chunk c is batch c.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    attn_reduce_dbias_kernel(const float* __restrict__ partial, T* __restrict__ grad_bias, int64_t Bb, int64_t Hb,
                             int64_t H, int64_t NM, int64_t b_chunks) {
  const int64_t size = Bb * Hb * NM;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x; i < size;
       i += static_cast<int64_t>(gridDim.x) * kReduceThreads) {
    const int64_t e = i % NM, hb = (i / NM) % Hb, bb = i / (NM * Hb);
    const int64_t c0 = Bb == 1 ? 0 : bb, c1 = Bb == 1 ? b_chunks : bb + 1;
    const int64_t h0 = Hb == 1 ? 0 : hb, h1 = Hb == 1 ? H : hb + 1;
    float acc = 0.f;
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t hh = h0; hh < h1; ++hh) acc += partial[(c * H + hh) * NM + e];
    }
    grad_bias[i] = from_float<T>(acc);
  }
}

}  // namespace attn
}  // namespace transxnet_ops
