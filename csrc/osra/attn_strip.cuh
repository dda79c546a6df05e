// Steps of the OSRA attention kernels on one warp's 16-row strip of a query tile and one key chunk. Row-wise values
// (max, lse, delta) are made by plain threads in shared memory and enter fragment math as row-broadcast 16x16
// tiles (tile[r][c] = value[r]), so fragments are only ever touched element-wise. Warp-level functions are called
// by all 32 lanes of the warp; stage_* by the whole block.
#pragma once
#include <cmath>

#include "osra/attn_mma.cuh"
#include "osra/attn_tile.cuh"

namespace transxnet_ops {
namespace attn {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

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

// Scores tile (64 x KC fp32, stride lds) = (bias[r, c] - row_offset[r]) * mul on rows r < rows and keys c < kvalid,
// -inf elsewhere. bias_rows: the tile's first row at the chunk's first key (row stride M), null = no bias;
// row_offset: the tile's rows of a per-row value in global memory (the backward's lse), or null. Block-wide, with
// the other loads of the tile.
template <typename T>
__device__ __forceinline__ void stage_bias_tile(float* S, int lds, const T* __restrict__ bias_rows, int64_t M,
                                                const float* __restrict__ row_offset, float mul, int rows, int KC,
                                                int kvalid, int tid, int nthreads) {
  for_each_strided<8>(kTileRows, KC, tid, nthreads, [&](int r, int c, int) {
    float x = -INFINITY;
    if (c < kvalid && r < rows) {
      x = bias_rows != nullptr ? to_float(bias_rows[r * M + c]) : 0.f;
      if (row_offset != nullptr) x -= row_offset[r];
      x *= mul;
    }
    S[r * lds + c] = x;
  });
}

// The strip's delta[r] = sum_d dO[r, d] * O[r, d] (both staged; rows past N are zero) as a row-broadcast 16x16
// tile, tile[r][c] = delta[r], for element-wise work with fragments. 16 lanes per row, two rows at a time.
template <typename T>
__device__ __forceinline__ void delta_tile_strip(float* tile, const T* dOs, int ld_do, const T* Os, int ld_o, int D,
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
    tile[r * 16 + sub] = acc;
  }
  __syncwarp();
}

template <typename T>
__device__ __forceinline__ unsigned pack_pair(float a, float b);  // two T in 32 bits, a first
template <>
__device__ __forceinline__ unsigned pack_pair<__half>(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const unsigned*>(&h);
}
template <>
__device__ __forceinline__ unsigned pack_pair<__nv_bfloat16>(float a, float b) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<const unsigned*>(&h);
}

// A 16x16 fp32 block (the warp's scratch, stride 16) to 16 rows of T at dst (stride ld, 16-byte aligned rows), 8
// consecutive elements per lane (row lane / 2); returns the sum of the lane's 8 values.
template <typename T>
__device__ __forceinline__ float scratch_to_operand_sum(const float* scratch, T* dst, int ld, int lane) {
  const int r = lane / 2, c = (lane % 2) * 8;
  const float4 lo = *reinterpret_cast<const float4*>(scratch + r * 16 + c);
  const float4 hi = *reinterpret_cast<const float4*>(scratch + r * 16 + c + 4);
  if constexpr (std::is_same<T, float>::value) {
    *reinterpret_cast<float4*>(dst + r * ld + c) = lo;
    *reinterpret_cast<float4*>(dst + r * ld + c + 4) = hi;
  } else {
    *reinterpret_cast<uint4*>(dst + r * ld + c) = make_uint4(pack_pair<T>(lo.x, lo.y), pack_pair<T>(lo.z, lo.w),
                                                             pack_pair<T>(hi.x, hi.y), pack_pair<T>(hi.z, hi.w));
  }
  return ((lo.x + lo.y) + (lo.z + lo.w)) + ((hi.x + hi.y) + (hi.z + hi.w));
}

constexpr int kMaxKeyTiles = 4;  // the backward takes keys in chunks of at most 64

// Backward recomputation for the warp's 16-row strip and one key chunk (KC <= 64), element-wise on fragments:
//   p  = exp2(scale2 * q k^T + sb)     sb = (bias - lse) * log2(e), staged in S (-inf on masked keys and rows)
//   ds = p * (dO v^T - delta)          delta from the strip's row-broadcast tile
// on_ds(j, ds) sees the ds fragment of key tile j. p then replaces S in the operand type T (16-bit rows of T sit
// at the front of S's fp32 rows: key tile j's T values cover floats of key tiles <= j, already read), and ds goes
// to dS (T, stride ld_ds). 16-bit types pass through the warp's 16x16 fp32 scratch.
template <typename T, typename OnDs>
__device__ __forceinline__ void backward_strip(float* S, int lds, T* dS, int ld_ds, float* scratch,
                                               const float* delta_tile, const T* Qs, const T* dOs, const T* K,
                                               const T* V, const Geometry& g, float scale2, int lane, OnDs&& on_ds) {
  T* P = reinterpret_cast<T*>(S);
  const int ldp = lds * static_cast<int>(sizeof(float) / sizeof(T));
#pragma unroll
  for (int j = 0; j < kMaxKeyTiles; ++j) {
    if (16 * j < g.KC) {
      AccFrag<T> p, dp, x;
      wmma::fill_fragment(p, 0.f);
      mma_accumulate<T, wmma::row_major, wmma::col_major>(p, Qs, g.ldx, K + 16 * j * g.ldx, g.ldx, g.Dp);
      wmma::load_matrix_sync(x, S + 16 * j, lds, wmma::mem_row_major);
#pragma unroll
      for (int i = 0; i < p.num_elements; ++i) p.x[i] = exp2f(fmaf(p.x[i], scale2, x.x[i]));
      wmma::fill_fragment(dp, 0.f);
      mma_accumulate<T, wmma::row_major, wmma::col_major>(dp, dOs, g.ldx, V + 16 * j * g.ldx, g.ldx, g.Dp);
      wmma::load_matrix_sync(x, delta_tile, 16, wmma::mem_row_major);
#pragma unroll
      for (int i = 0; i < dp.num_elements; ++i) dp.x[i] = p.x[i] * (dp.x[i] - x.x[i]);
      on_ds(j, dp);
      __syncwarp();  // every lane has read key tile j of S
      if constexpr (std::is_same<T, float>::value) {
        wmma::store_matrix_sync(S + 16 * j, p, lds, wmma::mem_row_major);
        wmma::store_matrix_sync(dS + 16 * j, dp, ld_ds, wmma::mem_row_major);
      } else {
        wmma::store_matrix_sync(scratch, p, 16, wmma::mem_row_major);
        __syncwarp();
        scratch_to_operand_sum(scratch, P + 16 * j, ldp, lane);
        __syncwarp();
        wmma::store_matrix_sync(scratch, dp, 16, wmma::mem_row_major);
        __syncwarp();
        scratch_to_operand_sum(scratch, dS + 16 * j, ld_ds, lane);
        __syncwarp();
      }
    }
  }
}

}  // namespace attn
}  // namespace transxnet_ops
