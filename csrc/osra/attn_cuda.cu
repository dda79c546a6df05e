// OSRA attention on CUDA: out = softmax(scale q k^T + bias) v, for tiny key sets (TransXNet: M = 49) and large ones.
//
// Forward (attn_forward_kernel). A block is 4 warps on 64-query-row tiles of one (b, h); warp w owns rows
// [16w, 16w + 16). Keys come in chunks of KC rows staged in shared memory with V; when all keys fit (M <= 256 and
// the tiles fit in half an SM's shared memory: TransXNet's M = 49 -> KC = 64) there is one chunk, K and V are
// staged once per block for several query tiles, and the softmax is exact (no rescaling). Scores come from WMMA
// (bf16/fp16 m16n16k16; fp32 as 3xTF32, see attn_mma.cuh) into fp32 shared memory, where plain threads add the
// bias, take row max / exp / sum, and write P in the input type over the scores; O += P V on tensor cores.
// Larger M runs the same kernel over several chunks with an online softmax (O kept in fp32 shared memory).
//
// Backward (attn_backward_kernel), one pass per block = (batch chunk, h, query chunk of T tiles, key chunk):
//   for b in the batch chunk:                       dK, dV of (b, h) live in WMMA accumulators (registers)
//     stage K, V of b
//     for each tile of the query chunk:             dbias of the query chunk lives in WMMA accumulators too
//       recompute S and P from lse, delta = rowsum(dO * O) in-kernel, dP = dO V^T, dS = P (dP - delta)
//       dq = scale dS K, written directly (single key chunk)
//       dbias += dS;  dK += dS^T Q;  dV += P^T dO
//     write dK, dV of b: in the output type if the query chunk is all of N, else as an fp32 partial
//   write dbias of the query chunk as an fp32 partial of the batch chunk
// The two reductions run over different axes (dK/dV over queries, dbias over the batch), so one of them must
// survive a loop: with b outer, dK/dV stay in registers for the tiles of one b, and the dbias of the query chunk
// (T tiles x KC keys, at most 8 fragments per warp) stays in registers across the batch chunk; neither is ever
// read back from memory. The partial traffic is q_chunks * B*H*M*D*8 + b_chunks * H*N*M*4 bytes, and the plan
// picks T and the batch chunk that minimise it while launching at least max(2, blocks per SM) blocks per SM
// (TransXNet T1: T = 2, 25 query chunks, ~11-18 batch chunks; see osra_cuda_backward_workspace). Small reduction
// kernels then sum the partials in a fixed order (deterministic, no atomics) and cast to the output type.
// With large M (several key chunks) or when it moves fewer bytes, the work is split into passes of the same
// kernel - dK/dV with long query chunks, dbias with whole-batch chunks - plus attn_dq_kernel, which loops over
// the key chunks of one query tile and accumulates dq in fp32 shared memory.
//
// Head dims up to 128 (padded to a multiple of 16 with zero columns, e.g. 24 -> 32) and KC are runtime values:
// one instantiation per dtype and kernel, no register arrays sized by the head dim.
#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "cuda_utils.cuh"
#include "osra/attn_launch.h"
#include "osra/attn_mma.cuh"
#include "osra/attn_strip.cuh"
#include "osra/attn_tile.cuh"

namespace transxnet_ops {
namespace attn {
namespace {

constexpr int kMaxDkvFrags = 4;     // WMMA accumulators per warp for dK/dV: KC * Dp <= 2048
constexpr int kMaxDbiasTiles = 2;   // query tiles whose dbias a backward block holds (KC <= 64: 8 accumulators)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxAllKeys = 256;    // the forward stages all keys at once up to this M
constexpr int kReduceThreads = 256;

__device__ __forceinline__ int clamp_rows(int64_t left, int cap) {
  return static_cast<int>(left < 0 ? 0 : left > cap ? cap : left);
}

// ------------------------------------------------------------------------------------------------ forward
template <typename T>
struct ForwardArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* bias;
  T* out;
  float* lse;
  int64_t B, H, N, M, D, Bb, Hb;
  float scale;
  int Dp, KC;
  int tiles_per_block;
  int64_t groups;  // blocks per (b, h)
};

// Writes rows [0, rows) x cols [0, cols) of a 16x16 block that the warp has just stored at `scratch` (stride 16)
// to dst (row stride ld), times `scale`.
template <typename Dst>
__device__ __forceinline__ void write_scratch(const float* scratch, Dst* dst, int64_t ld, int rows, int cols,
                                              float scale, int lane) {
  __syncwarp();
#pragma unroll 1
  for (int e = lane; e < 256; e += 32) {
    const int r = e / 16, c = e % 16;
    if (r < rows && c < cols) dst[r * ld + c] = from_float<Dst>(scale * scratch[e]);
  }
  __syncwarp();
}

// Fills row r of a 16x16 tile with x, from the 8 lanes (sub = 0..7) that own row r: a row-broadcast tile for
// element-wise work with fragments.
__device__ __forceinline__ void fill_row(float* tile, int r, int sub, float x) {
  tile[r * 16 + 2 * sub] = x;
  tile[r * 16 + 2 * sub + 1] = x;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 3) attn_forward_kernel(const ForwardArgs<T> a) {
  TXN_DYNAMIC_SMEM(unsigned char, smem_raw);
  unsigned char* smem = align_smem(smem_raw);
  const Geometry g = make_geometry(a.Dp, a.KC, sizeof(T));
  const int64_t chunks = (a.M + a.KC - 1) / a.KC;
  const bool online = chunks > 1;  // several key chunks: online softmax, the output in fp32 shared memory
  const ForwardSmem L = forward_smem(g, sizeof(T), online);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  T* sV = reinterpret_cast<T*>(smem + L.v);
  T* sQ = reinterpret_cast<T*>(smem + L.q);
  float* sS = reinterpret_cast<float*>(smem + L.s);
  T* sBias = reinterpret_cast<T*>(smem + L.bias);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, sub = lane % 8;
  float* scratch = reinterpret_cast<float*>(smem + L.stats) + 512 * warp;  // also the row-max tile
  float* stat = scratch + 256;                                             // alpha, then 1/l, tile
  float* row_max = reinterpret_cast<float*>(smem + L.row_max) + 16 * warp;
  zero_smem(smem, L.bytes - kSmemAlign, tid, kThreads);  // zero padding columns and rows, set once

  const int64_t bh = blockIdx.x / a.groups, b = bh / a.H, h = bh % a.H;
  const int64_t tiles = (a.N + kTileRows - 1) / kTileRows;
  const int64_t t_begin = (blockIdx.x % a.groups) * a.tiles_per_block;
  const int64_t t_end = t_begin + a.tiles_per_block < tiles ? t_begin + a.tiles_per_block : tiles;
  const T* q_bh = a.q + bh * a.N * a.D;
  const T* k_bh = a.k + bh * a.M * a.D;
  const T* v_bh = a.v + bh * a.M * a.D;
  const T* bias_bh = a.bias ? a.bias + bias_slice_offset(b, h, a.Bb, a.Hb, a.N, a.M) : nullptr;
  const int bias_ld = chunks == 1 ? static_cast<int>(a.M) : a.KC;  // row stride of the staged bias
  const int key_tiles = a.KC / 16;
  const float scale2 = a.scale * kLog2e;
  float* S = sS + 16 * warp * g.lds;
  float* O = online ? reinterpret_cast<float*>(smem + L.o) + 16 * warp * g.ldo : nullptr;
  T* P = reinterpret_cast<T*>(S);  // P in T over S: key tile j's values cover floats of key tiles <= j
  const int ldp = g.lds * static_cast<int>(sizeof(float) / sizeof(T));
  __syncthreads();
  if (chunks == 1) {  // all keys: staged once for every tile of the block
    load_rows(sK, g.ldx, k_bh, static_cast<int>(a.M), static_cast<int>(a.D), tid, kThreads);
    load_rows(sV, g.ldx, v_bh, static_cast<int>(a.M), static_cast<int>(a.D), tid, kThreads);
  }
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n0 = t * kTileRows;
    const int rows = clamp_rows(a.N - n0, kTileRows);
    const int strip_rows = clamp_rows(rows - 16 * warp, 16);
    load_rows(sQ, g.ldx, q_bh + n0 * a.D, rows, static_cast<int>(a.D), tid, kThreads);
    if (rows < kTileRows) zero_rows(sQ, g.ldx, rows, kTileRows, g.Dp, tid, kThreads);
    float m[4];   // running max (base 2) of rows 4 * pass + lane / 8
    float l = 0;  // running sum of row lane / 2 (in both lanes of the pair)
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = -INFINITY;

    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t m0 = c * a.KC;
      const int kvalid = clamp_rows(a.M - m0, a.KC);
      if (chunks > 1) {
        if (c > 0) __syncthreads();  // every warp is done with the previous chunk's K, V and bias
        load_rows(sK, g.ldx, k_bh + m0 * a.D, kvalid, static_cast<int>(a.D), tid, kThreads);
        load_rows(sV, g.ldx, v_bh + m0 * a.D, kvalid, static_cast<int>(a.D), tid, kThreads);
        if (kvalid < a.KC) {
          zero_rows(sK, g.ldx, kvalid, a.KC, g.Dp, tid, kThreads);
          zero_rows(sV, g.ldx, kvalid, a.KC, g.Dp, tid, kThreads);
        }
      }
      if (bias_bh != nullptr) {  // as stored: one contiguous run for all keys, else kvalid keys per row
        if (chunks == 1) {
          load_rows(sBias, 0, bias_bh + n0 * a.M, 1, rows * bias_ld, tid, kThreads);
        } else {
          load_rows_strided(sBias, bias_ld, bias_bh + n0 * a.M + m0, a.M, rows, kvalid, tid, kThreads);
        }
      }
      __syncthreads();

      #pragma unroll 1

      for (int j = 0; j < a.KC; j += 16) {  // raw scores q k^T
        AccFrag<T> acc;
        wmma::fill_fragment(acc, 0.f);
        mma_accumulate<T, wmma::row_major, wmma::col_major>(acc, sQ + 16 * warp * g.ldx, g.ldx, sK + j * g.ldx, g.ldx,
                                                            g.Dp);
        wmma::store_matrix_sync(S + j, acc, g.lds, wmma::mem_row_major);
      }
      __syncwarp();
      // Base-2 scores log2(e) (scale s + bias), -inf on keys past the chunk; the row max and the factor alpha
      // that rescales what the row has so far. 8 lanes per row, 4 rows per pass.
#pragma unroll
      for (int pass = 0; pass < 4; ++pass) {
        const int r = 4 * pass + lane / 8;
        const T* bias_row = bias_bh != nullptr && r < strip_rows ? sBias + (16 * warp + r) * bias_ld : nullptr;
        float* Sr = S + r * g.lds;
        float chunk_max = -INFINITY;
        for (int cc = sub; cc < a.KC; cc += 8) {
          float x = -INFINITY;
          if (cc < kvalid) x = fmaf(Sr[cc], scale2, bias_row != nullptr ? kLog2e * to_float(bias_row[cc]) : 0.f);
          Sr[cc] = x;
          chunk_max = fmaxf(chunk_max, x);
        }
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 1));
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 2));
        chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 4));
        const float m_new = fmaxf(m[pass], chunk_max);
        const float m_ref = m_new == -INFINITY ? 0.f : m_new;  // a row masked so far: keep exp2() finite
        fill_row(scratch, r, sub, m_ref);
        fill_row(stat, r, sub, exp2f(m[pass] - m_ref));
        if (sub == 0) row_max[r] = m_ref;
        m[pass] = m_new;
      }
      __syncwarp();
      AccFrag<T> mx;
      wmma::load_matrix_sync(mx, scratch, 16, wmma::mem_row_major);
      // P = 2^(s - max) in T over S, and its row sums; then, with several chunks, O = alpha O + P V.
      float chunk_sum = 0.f;
      #pragma unroll 1
      for (int j = 0; j < key_tiles; ++j) {
        AccFrag<T> p;
        wmma::load_matrix_sync(p, S + 16 * j, g.lds, wmma::mem_row_major);
#pragma unroll
        for (int i = 0; i < p.num_elements; ++i) p.x[i] = exp2f(p.x[i] - mx.x[i]);
        __syncwarp();  // every lane has read the row-max tile (j = 0) and key tile j of S
        wmma::store_matrix_sync(scratch, p, 16, wmma::mem_row_major);
        __syncwarp();
        chunk_sum += scratch_to_operand_sum(scratch, P + 16 * j, ldp, lane);
        __syncwarp();
      }
      chunk_sum += __shfl_xor_sync(kFullMask, chunk_sum, 1);
      l = stat[(lane / 2) * 16] * l + chunk_sum;
      if (online) {
        AccFrag<T> alpha;
        wmma::load_matrix_sync(alpha, stat, 16, wmma::mem_row_major);
        #pragma unroll 1
        for (int d = 0; d < g.Dp; d += 16) {
          AccFrag<T> acc;
          wmma::fill_fragment(acc, 0.f);
          if (c > 0) {
            wmma::load_matrix_sync(acc, O + d, g.ldo, wmma::mem_row_major);
#pragma unroll
            for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= alpha.x[i];
          }
          mma_accumulate<T, wmma::row_major, wmma::row_major>(acc, P, ldp, sV + d, g.ldx, a.KC);
          wmma::store_matrix_sync(O + d, acc, g.ldo, wmma::mem_row_major);
        }
      }
      __syncwarp();
    }

    // out = O / l, lse = max + log(l) (natural log).
    const int r = lane / 2;
    for (int i = 0; i < 8; ++i) stat[r * 16 + (lane % 2) * 8 + i] = 1.f / l;
    if (lane % 2 == 0 && r < strip_rows) a.lse[bh * a.N + n0 + 16 * warp + r] = row_max[r] * kLn2 + __logf(l);
    __syncwarp();
    AccFrag<T> inv_l;
    wmma::load_matrix_sync(inv_l, stat, 16, wmma::mem_row_major);
    T* out_strip = a.out + (bh * a.N + n0 + 16 * warp) * a.D;
    #pragma unroll 1
    for (int d = 0; d < g.Dp; d += 16) {
      AccFrag<T> acc;
      if (online) {
        wmma::load_matrix_sync(acc, O + d, g.ldo, wmma::mem_row_major);
      } else {  // one chunk: P (still over S) times V, normalised on the way out
        wmma::fill_fragment(acc, 0.f);
        mma_accumulate<T, wmma::row_major, wmma::row_major>(acc, P, ldp, sV + d, g.ldx, a.KC);
      }
#pragma unroll
      for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= inv_l.x[i];
      wmma::store_matrix_sync(scratch, acc, 16, wmma::mem_row_major);
      write_scratch(scratch, out_strip + d, a.D, strip_rows, clamp_rows(a.D - d, 16), 1.f, lane);
    }
    __syncthreads();  // sQ, the staged bias (and a single chunk's sK, sV) are read by every warp
  }
}

// ------------------------------------------------------------------------------------------------ backward
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

// ------------------------------------------------------------------------------------------------ reductions
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

// ------------------------------------------------------------------------------------------------ host side
struct Device {
  int sms = 1;
  int smem_optin = 48 * 1024;
};

cudaError_t query_device(Device* dev) {
  int id = 0;
  cudaError_t err = cudaGetDevice(&id);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&dev->sms, cudaDevAttrMultiProcessorCount, id);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&dev->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, id);
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

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

struct ForwardPlan {
  int Dp = 0, KC = 0, tiles_per_block = 1;
  int64_t groups = 1;
  size_t smem = 0;
};

// One chunk of all keys when they fit half an SM's shared memory (two blocks per SM), else the largest chunk
// that does (online softmax).
bool plan_forward(const AttnShape& s, int eb, const Device& dev, ForwardPlan* p) {
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
  // With one key chunk a block reuses its staged K, V over several tiles; keep >= ~8 blocks per SM.
  const int64_t tiles = (s.N + kTileRows - 1) / kTileRows;
  const int64_t all_tiles = s.B * s.H * tiles;
  int64_t per_block = s.M <= p->KC ? all_tiles / (8 * static_cast<int64_t>(dev.sms)) : 1;
  per_block = std::max<int64_t>(1, std::min<int64_t>(per_block, std::min<int64_t>(tiles, 16)));
  p->tiles_per_block = static_cast<int>(per_block);
  p->groups = (tiles + per_block - 1) / per_block;
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

// Query chunks of `tiles_per_qchunk` tiles, then the fewest batch chunks that launch `target` blocks.
BackwardPass make_pass(const AttnShape& s, int64_t key_chunks, int64_t tiles, int tiles_per_qchunk, int64_t target,
                       bool dkv, bool dbias) {
  BackwardPass p;
  p.dkv = dkv;
  p.dbias = dbias;
  p.tiles_per_qchunk = tiles_per_qchunk;
  p.q_chunks = (tiles + tiles_per_qchunk - 1) / tiles_per_qchunk;
  const int64_t base = s.H * p.q_chunks * key_chunks;
  int64_t b_chunks = std::min<int64_t>(s.B, std::max<int64_t>(1, (target + base - 1) / base));
  if (dbias && s.Bb > 1) b_chunks = s.B;  // a per-batch bias: every batch has its own slice
  p.batch_per_chunk = static_cast<int>(std::max<int64_t>(1, s.B / b_chunks));  // rounded to reach b_chunks
  p.b_chunks = (s.B + p.batch_per_chunk - 1) / p.batch_per_chunk;
  return p;
}

// A set of passes and what it costs: modelled bytes, fp32 workspace, and the smallest grid among its passes.
struct Candidate {
  int passes = 0;
  BackwardPass pass[2];
  int64_t blocks = 0, workspace = 0;
  double bytes = 0;
};

// Within the workspace cap first; then filling the GPU (>= target blocks); then fewer bytes among those that fill
// it, more blocks among those that do not.
bool better(const Candidate& a, const Candidate& b, int64_t target, int64_t cap) {
  if ((a.workspace <= cap) != (b.workspace <= cap)) return a.workspace <= cap;
  const bool fills = a.blocks >= target, b_fills = b.blocks >= target;
  if (fills != b_fills) return fills;
  if (!fills && a.blocks != b.blocks) return a.blocks > b.blocks;
  return a.bytes < b.bytes;
}

// Choose the key chunk, passes and chunk counts. Modelled bytes: each pass reads q, grad_out and out once per key
// chunk (HBM or L2) and recomputes every score, which at ~40 instructions per score and thread costs about as
// long as moving 8 bytes; fp32 partials are written and read back once. The workspace stays under
// max(256 MiB, 2 x q's bytes) whenever a plan allows (the fused pass at detection sizes would need gigabytes of
// dK/dV partials: it splits instead).
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
  const int64_t target = static_cast<int64_t>(dev.sms) * std::max(2, blocks_per_sm(p->smem, dev, regs_per_thread));
  const int64_t cap = std::max<int64_t>(int64_t(64) << 20, s.B * s.H * s.N * s.D * eb / 2);  // floats
  const int64_t kv_floats = 2 * s.B * s.H * s.M * s.D;  // one dK + dV partial
  const int64_t bias_floats = s.H * s.N * s.M;          // one dbias partial
  const double pass_bytes = static_cast<double>(s.B) * s.H * s.N * p->key_chunks * (3.0 * eb * s.D + 8.0 * p->KC);
  auto finish = [&](Candidate& c) {
    c.blocks = INT64_MAX;
    c.bytes = (c.passes + (p->dq_kernel ? 1 : 0)) * pass_bytes;
    for (int i = 0; i < c.passes; ++i) {
      const BackwardPass& q = c.pass[i];
      c.blocks = std::min(c.blocks, q.blocks(s, p->key_chunks));
      if (q.dkv && q.q_chunks > 1) c.workspace += q.q_chunks * kv_floats;
      if (q.dbias) c.workspace += q.b_chunks * bias_floats;
    }
    c.bytes += 8.0 * c.workspace;
  };

  Candidate best;
  // Fused: one pass; the dbias of a query chunk (at most kMaxDbiasTiles tiles) is held in registers.
  const int64_t max_tiles = std::min<int64_t>(tiles, want_dbias ? kMaxDbiasTiles : tiles);
  for (int64_t t = 1; t <= max_tiles; ++t) {
    Candidate c;
    c.passes = 1;
    c.pass[0] = make_pass(s, p->key_chunks, tiles, static_cast<int>(t), target, true, want_dbias);
    finish(c);
    if (best.passes == 0 || better(c, best, target, cap)) best = c;
  }
  // Split: dK/dV with query chunks as long as the grid allows, dbias with batch chunks as long as it allows.
  if (want_dbias) {
    const int64_t kv_blocks = s.B * s.H * p->key_chunks;
    const int64_t q_chunks = std::min<int64_t>(tiles, std::max<int64_t>(1, (target + kv_blocks - 1) / kv_blocks));
    Candidate c;
    c.passes = 2;
    c.pass[0] = make_pass(s, p->key_chunks, tiles, static_cast<int>((tiles + q_chunks - 1) / q_chunks), 1, true,
                          false);
    c.pass[0].batch_per_chunk = 1;
    c.pass[0].b_chunks = s.B;
    c.pass[1] = make_pass(s, p->key_chunks, tiles, 1, target, false, true);
    finish(c);
    if (better(c, best, target, cap)) best = c;
  }
  p->passes = best.passes;
  p->pass[0] = best.pass[0];
  p->pass[1] = best.pass[1];
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
cudaError_t make_backward_plan(const AttnShape& s, bool want_dbias, BackwardPlan* plan) {
  Device dev;
  cudaError_t err = query_device(&dev);
  if (err != cudaSuccess) return err;
  cudaFuncAttributes attr{};
  err = cudaFuncGetAttributes(&attr, attn_backward_kernel<T>);
  if (err != cudaSuccess) return err;
  return plan_backward(s, sizeof(T), want_dbias, dev, attr.numRegs, plan) ? cudaSuccess : cudaErrorInvalidValue;
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
  ForwardPlan plan;
  if (!plan_forward(s, sizeof(T), dev, &plan)) return cudaErrorInvalidConfiguration;
  err = allow_smem(attn_forward_kernel<T>, plan.smem);
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
  BackwardPlan plan;
  cudaError_t err = make_backward_plan<T>(s, dbias != nullptr, &plan);
  if (err != cudaSuccess) return err;
  Device dev;
  err = query_device(&dev);
  if (err != cudaSuccess) return err;
  float* dkv_partial = plan.dkv_floats > 0 ? workspace : nullptr;
  float* dbias_partial = plan.dbias_floats > 0 ? workspace + plan.dkv_floats : nullptr;
  if ((err = allow_smem(attn_backward_kernel<T>, plan.smem)) != cudaSuccess) return err;

  BackwardArgs<T> args{};
  args.q = q, args.k = k, args.v = v, args.bias = bias, args.dout = dout, args.out = out, args.lse = lse;
  args.B = s.B, args.H = s.H, args.N = s.N, args.M = s.M, args.D = s.D, args.Bb = s.Bb, args.Hb = s.Hb;
  args.scale = scale;
  args.Dp = plan.Dp, args.KC = plan.KC, args.key_chunks = plan.key_chunks;
  args.tiles_per_qchunk = 1, args.q_chunks = 1, args.batch_per_chunk = 1, args.b_chunks = 1;
  if (plan.dq_kernel) {
    if ((err = allow_smem(attn_dq_kernel<T>, plan.smem)) != cudaSuccess) return err;
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
  attn::BackwardPlan plan;
  const cudaError_t err = dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return attn::make_backward_plan<T>(s, want_grad_bias, &plan);
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
