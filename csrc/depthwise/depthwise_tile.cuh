// Per-thread register tiles: kTileRows x kTileCols outputs (or weight-gradient contributions) computed from
// input rows read out of shared memory once as 16-byte vectors. Compile-time kernel size K keeps the filter (or
// the K*K gradient accumulators) in registers; the *_generic versions take any odd k at run time.
#pragma once
#include "depthwise/depthwise_args.h"

namespace transxnet_ops {
namespace depthwise {

constexpr int R = kTileRows;
constexpr int V = kTileCols;

// dst[0 .. 4*N) = src[0 .. 4*N) (16-byte aligned shared memory) into registers.
template <int N>
__device__ __forceinline__ void load_row(const float* __restrict__ src, float* dst) {
#pragma unroll
  for (int q = 0; q < N; ++q) {
    const float4 t = reinterpret_cast<const float4*>(src)[q];
    dst[4 * q] = t.x;
    dst[4 * q + 1] = t.y;
    dst[4 * q + 2] = t.z;
    dst[4 * q + 3] = t.w;
  }
}

// acc[r][v] = bias + sum_{i,j < K} w[i][j] * in[(r + i) * pitch + v + j] for ROWS output rows. `in` points at
// the first input cell of the rows (16-byte aligned), `w` at the filter staged as [K][round_up4(K)]. Each input
// row is loaded once and feeds every output row it touches: (ROWS + K - 1) * round_up4(V + K - 1) / 4 vector
// loads for ROWS*V*K*K FMAs.
template <int K, int ROWS>
__device__ __forceinline__ void conv_rows(const float* __restrict__ in, int pitch, const float* __restrict__ w,
                                          float bias, float (&acc)[ROWS][V]) {
  constexpr int KP = round_up4(K), WIN = round_up4(V + K - 1);
  float f[K][KP];
#pragma unroll
  for (int i = 0; i < K; ++i) load_row<KP / 4>(w + i * KP, f[i]);
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[r][v] = bias;
#pragma unroll
  for (int ir = 0; ir < ROWS + K - 1; ++ir) {
    float win[WIN];
    load_row<WIN / 4>(in + ir * pitch, win);
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      const int i = ir - r;
      if (i < 0 || i >= K) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int v = 0; v < V; ++v) acc[r][v] = fmaf(f[i][j], win[v + j], acc[r][v]);
    }
  }
}

// Any odd k: taps in chunks of 4 columns; an 8-wide input window per (input row, chunk) serves all R rows.
template <int ROWS>
__device__ __forceinline__ void conv_rows_generic(const float* __restrict__ in, int pitch,
                                                  const float* __restrict__ w, int k, float bias,
                                                  float (&acc)[ROWS][V]) {
  const int kp = round_up4(k);
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) acc[r][v] = bias;
  for (int ir = 0; ir < ROWS + k - 1; ++ir) {
    for (int j0 = 0; j0 < kp; j0 += 4) {
      float x8[8];
      load_row<2>(in + ir * pitch + j0, x8);
      const int taps = min(4, k - j0);  // zero-padded taps are skipped, not multiplied (0 * inf would be NaN)
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int i = ir - r;
        if (i < 0 || i >= k) continue;
        float f[4];
        load_row<1>(w + i * kp + j0, f);
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          if (jj >= taps) break;
#pragma unroll
          for (int v = 0; v < V; ++v) acc[r][v] = fmaf(f[jj], x8[v + jj], acc[r][v]);
        }
      }
    }
  }
}

// Weight-gradient contributions of one tile: gw[i*K + j] = sum_{r,v} gy[r][v] * x[(r + i) * pitch + v + j] and
// gb = sum gy. `gy` points at the tile's first grad_y cell, `x` at its first input-window cell.
template <int K>
__device__ __forceinline__ void weight_grad_tile(const float* __restrict__ gy, const float* __restrict__ x, int pitch,
                                                 float (&gw)[K * K + 1]) {
  constexpr int WIN = round_up4(V + K - 1);
  float g[R][V];
  float gb = 0.f;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int v = 0; v < V; ++v) {
      g[r][v] = gy[r * pitch + v];
      gb += g[r][v];
    }
  gw[K * K] = gb;
#pragma unroll
  for (int t = 0; t < K * K; ++t) gw[t] = 0.f;
#pragma unroll
  for (int ir = 0; ir < R + K - 1; ++ir) {
    float win[WIN];
    load_row<WIN / 4>(x + ir * pitch, win);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = ir - r;
      if (i < 0 || i >= K) continue;
#pragma unroll
      for (int j = 0; j < K; ++j)
#pragma unroll
        for (int v = 0; v < V; ++v) gw[i * K + j] = fmaf(g[r][v], win[v + j], gw[i * K + j]);
    }
  }
}

// dst[0 .. round_up4(N)) (16-byte aligned) = src zero-padded (first sample of a batch chunk) or dst + src (later
// samples, fixed order).
template <int N>
__device__ __forceinline__ void accumulate(float* __restrict__ dst, const float (&src)[N], bool first) {
  float4* d4 = reinterpret_cast<float4*>(dst);
#pragma unroll
  for (int q = 0; q < round_up4(N) / 4; ++q) {
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = 4 * q + u < N ? src[4 * q + u < N ? 4 * q + u : 0] : 0.f;
    if (!first) {
      const float4 old = d4[q];
      v[0] += old.x, v[1] += old.y, v[2] += old.z, v[3] += old.w;
    }
    d4[q] = make_float4(v[0], v[1], v[2], v[3]);
  }
}

// Generic-k weight gradient, parallel over tap tasks (plane p, filter row i, 4-column chunk j0; i == k is the
// bias) and `slices` of the region rows. Each task's 4 sums go to priv[(slice * tasks + task)], stored for the
// first sample and added after.
struct GenericTasks {
  int chunks, per_plane, tasks, slices;
  __device__ GenericTasks(int k, int planes) {
    chunks = round_up4(k) / 4;
    per_plane = (k + 1) * chunks;
    tasks = planes * per_plane;
    slices = max(1, static_cast<int>(blockDim.x) / max(1, tasks));
  }
};

__device__ inline void weight_grad_generic(const float* __restrict__ s_gy, const float* __restrict__ s_x,
                                           int plane_floats, int pitch, int k, const GenericTasks& gt, int rows,
                                           int cols, float4* __restrict__ priv, bool first) {
  const int pad = k / 2;
  for (int t = threadIdx.x; t < gt.tasks * gt.slices; t += blockDim.x) {
    const int task = t % gt.tasks, slice = t / gt.tasks;
    const int p = task / gt.per_plane, rem = task - p * gt.per_plane;
    const int i = rem / gt.chunks, j0 = 4 * (rem - i * gt.chunks);
    const float* gy = s_gy + p * plane_floats + pad * pitch + pad;
    float a[4] = {0.f, 0.f, 0.f, 0.f};
    if (i == k) {
      for (int h = slice; h < rows; h += gt.slices)
        for (int c = 0; c < cols; ++c) a[0] += gy[h * pitch + c];
    } else {
      const float* x = s_x + p * plane_floats + i * pitch + j0;
      const int taps = min(4, k - j0);
      for (int h = slice; h < rows; h += gt.slices) {
        for (int c = 0; c < cols; c += 4) {
          float g[4], x8[8];
#pragma unroll
          for (int v = 0; v < 4; ++v) g[v] = gy[h * pitch + c + v];
          load_row<2>(x + h * pitch + c, x8);
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) {
            if (jj >= taps) break;
#pragma unroll
            for (int v = 0; v < 4; ++v) a[jj] = fmaf(g[v], x8[v + jj], a[jj]);
          }
        }
      }
    }
    float4 sum = make_float4(a[0], a[1], a[2], a[3]);
    if (!first) {
      const float4 old = priv[t];
      sum = make_float4(old.x + a[0], old.y + a[1], old.z + a[2], old.w + a[3]);
    }
    priv[t] = sum;
  }
}

}  // namespace depthwise
}  // namespace transxnet_ops
