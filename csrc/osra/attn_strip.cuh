// Warp-level steps of the OSRA attention kernels on one warp's 16-row strip of a query tile and one key chunk.
// Row-wise work (bias, masks, softmax, lse/delta) is done by plain threads on fp32 scores in shared memory; the
// products go through attn_mma.cuh. Every function is called by all 32 lanes of the warp.
#pragma once
#include <cmath>

#include "osra/attn_mma.cuh"
#include "osra/attn_tile.cuh"

namespace transxnet_ops {
namespace attn {

constexpr unsigned kFullMask = 0xffffffffu;

// Scores tile (64 x KC fp32, stride lds) = bias rows [0, rows) of the tile at keys [0, kvalid) (`bias_rows`: the
// tile's first row at the chunk's first key, row stride M; null = no bias), 0 on rows past `rows`, -inf on keys
// past kvalid. Block-wide, with the other loads of the tile.
template <typename T>
__device__ __forceinline__ void stage_bias_tile(float* S, int lds, const T* __restrict__ bias_rows, int64_t M, int rows,
                                                int KC, int kvalid, int tid, int nthreads) {
  for_each_strided(kTileRows, KC, tid, nthreads, [&](int r, int c, int) {
    S[r * lds + c] = c >= kvalid ? -INFINITY : bias_rows != nullptr && r < rows ? to_float(bias_rows[r * M + c]) : 0.f;
  });
}

// S = scale * Qs K^T + S (S holds the staged bias): Qs the strip's 16 query rows, K the chunk's KC key rows.
template <typename T>
__device__ __forceinline__ void scores_strip(float* S, int lds, const T* Qs, const T* K, const Geometry& g,
                                             float scale) {
  for (int j = 0; j < g.KC; j += 16) {
    AccFrag<T> acc, bias;
    wmma::fill_fragment(acc, 0.f);
    mma_accumulate<T, wmma::row_major, wmma::col_major>(acc, Qs, g.ldx, K + j * g.ldx, g.ldx, g.Dp);
    wmma::load_matrix_sync(bias, S + j, lds, wmma::mem_row_major);
#pragma unroll
    for (int i = 0; i < acc.num_elements; ++i) acc.x[i] = fmaf(acc.x[i], scale, bias.x[i]);
    __syncwarp();  // every lane has read this 16x16 block before any lane overwrites it
    wmma::store_matrix_sync(S + j, acc, lds, wmma::mem_row_major);
  }
  __syncwarp();
}

// Fp32 strip (16 x cols) of stride lds, converted in place to T with row stride lds * 4 / sizeof(T): row r of the
// T copy occupies the front of row r's fp32 bytes, so each 32-column step only overwrites floats that this or an
// earlier step has already read (the __syncwarp orders the reads before the writes). No-op for float.
template <typename T>
__device__ __forceinline__ void strip_to_operand(float* S, int lds, int cols, int lane) {
  if constexpr (!std::is_same<T, float>::value) {
    T* out = reinterpret_cast<T*>(S);
    const int ldt = lds * static_cast<int>(sizeof(float) / sizeof(T));
  #pragma unroll 1
  for (int r = 0; r < 16; ++r) {
      for (int c0 = 0; c0 < cols; c0 += 32) {
        const int c = c0 + lane;
        const float x = c < cols ? S[r * lds + c] : 0.f;
        __syncwarp();
        if (c < cols) out[r * ldt + c] = from_float<T>(x);
      }
    }
    __syncwarp();
  }
}

// One online-softmax step of the forward over a key chunk whose scores are in S: 8 lanes per row, 4 rows per
// pass. m/l are the running max and sum of rows 4 * pass + lane / 8; the chunk's exp(s - m) go to P (aliasing S,
// see strip_to_operand), and the rows of O (fp32, the output so far) are rescaled when `rescale`.
template <typename T>
__device__ __forceinline__ void softmax_strip(float* S, int lds, float* O, int ldo, const Geometry& g, bool rescale,
                                              float (&m)[4], float (&l)[4], int lane) {
  T* P = reinterpret_cast<T*>(S);
  const int ldp = lds * static_cast<int>(sizeof(float) / sizeof(T));
  const int sub = lane % 8;
#pragma unroll
  for (int pass = 0; pass < 4; ++pass) {
    const int r = 4 * pass + lane / 8;
    const float* Sr = S + r * lds;
    float chunk_max = -INFINITY;
    for (int c = sub; c < g.KC; c += 8) chunk_max = fmaxf(chunk_max, Sr[c]);
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 1));
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 2));
    chunk_max = fmaxf(chunk_max, __shfl_xor_sync(kFullMask, chunk_max, 4));
    const float m_new = fmaxf(m[pass], chunk_max);
    const float m_ref = m_new == -INFINITY ? 0.f : m_new;  // a row masked so far: keep exp() finite
    const float alpha = __expf(m[pass] - m_ref);
    float sum = 0.f;
    T* Pr = P + r * ldp;
    for (int c0 = 0; c0 < g.KC; c0 += 8) {
      const float e = __expf(Sr[c0 + sub] - m_ref);
      sum += e;
      __syncwarp();  // P aliases S: these floats were read in this or an earlier step
      Pr[c0 + sub] = from_float<T>(e);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    sum += __shfl_xor_sync(kFullMask, sum, 2);
    sum += __shfl_xor_sync(kFullMask, sum, 4);
    l[pass] = alpha * l[pass] + sum;
    m[pass] = m_new;
    if (rescale) {
      for (int d = sub; d < g.Dp; d += 8) O[r * ldo + d] *= alpha;
    }
  }
  __syncwarp();
}

// delta[r] = sum_d dO[r, d] * O[r, d] of the strip's 16 rows, both staged (rows past N are zero): 16 lanes per row,
// two rows at a time.
template <typename T>
__device__ __forceinline__ void delta_strip(float* delta, const T* dOs, int ld_do, const T* Os, int ld_o, int D,
                                            int lane) {
  const int sub = lane % 16;
#pragma unroll 1
  for (int r0 = 0; r0 < 16; r0 += 2) {
    const int r = r0 + lane / 16;
    float acc = 0.f;
    for (int d = sub; d < D; d += 16) acc = fmaf(to_float(dOs[r * ld_do + d]), to_float(Os[r * ld_o + d]), acc);
    acc += __shfl_xor_sync(kFullMask, acc, 8);
    acc += __shfl_xor_sync(kFullMask, acc, 4);
    acc += __shfl_xor_sync(kFullMask, acc, 2);
    acc += __shfl_xor_sync(kFullMask, acc, 1);
    if (sub == 0) delta[r] = acc;
  }
  __syncwarp();
}

// Backward recomputation for the strip and one key chunk, given the staged bias in S:
//   P (T, stride ldp)  = exp(scale q k^T + bias - lse)            (0 on rows past `rows` and keys past the chunk)
//   S (fp32, stride lds) = dS = P * (dO v^T - delta)
// Qs/dOs are the strip's rows of the q/grad_out tiles; lse/delta the strip's row values.
template <typename T>
__device__ __forceinline__ void gradients_strip(float* S, int lds, T* P, int ldp, const T* Qs, const T* dOs,
                                                const T* K, const T* V, const Geometry& g, const float* lse,
                                                const float* delta, int rows, float scale, int lane) {
  scores_strip<T>(S, lds, Qs, K, g, scale);
#pragma unroll 1
  for (int r = 0; r < 16; ++r) {
    const bool valid = r < rows;
    const float row_lse = lse[r];
#pragma unroll 2
    for (int c = lane; c < g.KC; c += 32) {
      P[r * ldp + c] = from_float<T>(valid ? __expf(S[r * lds + c] - row_lse) : 0.f);
    }
  }
  __syncwarp();
  for (int j = 0; j < g.KC; j += 16) {  // dP = dO V^T, over the scores
    AccFrag<T> acc;
    wmma::fill_fragment(acc, 0.f);
    mma_accumulate<T, wmma::row_major, wmma::col_major>(acc, dOs, g.ldx, V + j * g.ldx, g.ldx, g.Dp);
    wmma::store_matrix_sync(S + j, acc, lds, wmma::mem_row_major);
  }
  __syncwarp();
#pragma unroll 1
  for (int r = 0; r < 16; ++r) {
    const float row_delta = delta[r];
#pragma unroll 2
    for (int c = lane; c < g.KC; c += 32) S[r * lds + c] = to_float(P[r * ldp + c]) * (S[r * lds + c] - row_delta);
  }
  __syncwarp();
}

}  // namespace attn
}  // namespace transxnet_ops
