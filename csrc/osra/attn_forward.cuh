// The OSRA attention forward kernel (design: attn_cuda.cu).
#pragma once
#include <cmath>

#include "osra/attn_mma.cuh"
#include "osra/attn_strip.cuh"
#include "osra/attn_tile.cuh"

namespace transxnet_ops {
namespace attn {

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

// out and lse for query tiles [t0, t0 + tiles_per_block) of one (b, h) per block, keys in chunks of KC.
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

}  // namespace attn
}  // namespace transxnet_ops
