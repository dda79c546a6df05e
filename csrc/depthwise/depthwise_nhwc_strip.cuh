// Per-thread strips of the channels-last kernels: kVec consecutive channels of kStrip consecutive pixels of one
// row, accumulated in fp32 registers. Inputs are read straight from global memory as channel vectors (neighbouring
// threads hold neighbouring channel vectors, so a warp's loads are contiguous runs of a pixel's channels); each
// vector loaded for a filter row serves every tap of the strip that sees it. Compile-time K unrolls the taps and
// needs full, aligned channel vectors; the *_generic versions take any odd k and partial or unaligned vectors.
#pragma once
#include "cuda_utils.cuh"
#include "depthwise/depthwise_layout.h"
#include "depthwise/depthwise_nhwc_args.h"
#include "depthwise/depthwise_stage.cuh"

namespace transxnet_ops {
namespace depthwise_nhwc {

using depthwise::Pack;

// A full channel vector, one vector load (aligned).
template <typename T>
__device__ __forceinline__ void load_full(const T* __restrict__ p, float (&v)[kVec]) {
  const Pack<T, kVec> t = *reinterpret_cast<const Pack<T, kVec>*>(p);
#pragma unroll
  for (int e = 0; e < kVec; ++e) v[e] = to_float(t.v[e]);
}

// The first n (1..kVec) channels of a vector, zeros after; one vector load when `vec` (aligned) and n == kVec.
template <typename T>
__device__ __forceinline__ void load_part(const T* __restrict__ p, int n, bool vec, float (&v)[kVec]) {
  if (vec && n == kVec) {
    load_full(p, v);
    return;
  }
#pragma unroll
  for (int e = 0; e < kVec; ++e) v[e] = e < n ? to_float(p[e]) : 0.f;
}

template <typename T>
__device__ __forceinline__ void store_part(T* __restrict__ p, int n, bool vec, const float (&v)[kVec]) {
  if (vec && n == kVec) {
    Pack<T, kVec> t;
#pragma unroll
    for (int e = 0; e < kVec; ++e) t.v[e] = from_float<T>(v[e]);
    *reinterpret_cast<Pack<T, kVec>*>(p) = t;
    return;
  }
#pragma unroll
  for (int e = 0; e < kVec; ++e)
    if (e < n) p[e] = from_float<T>(v[e]);
}

// One tap of kVec channels from the [k*k][pitch] filters in shared memory (16-byte aligned).
__device__ __forceinline__ void load_tap(const float* __restrict__ p, float (&v)[kVec]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
}

__device__ __forceinline__ void fma_vec(const float (&a)[kVec], const float (&b)[kVec], float (&acc)[kVec]) {
#pragma unroll
  for (int e = 0; e < kVec; ++e) acc[e] = fmaf(a[e], b[e], acc[e]);
}

// acc[s] += sum_{i,j < K} f[i][j] * in[h + i - K/2][w0 + s + j - K/2] (zero outside the H x W map) for the thread's
// channels: `in` points at them in one sample, `f` at their tap 0 of the [K*K][pitch] filters. Per filter row, the
// kStrip + K - 1 input vectors stream through one register vector, each feeding up to K accumulators.
template <int K, typename T>
__device__ __forceinline__ void conv_strip(const T* __restrict__ in, const NhwcStrides& st, int H, int W, int h,
                                           int w0, const float* __restrict__ f, int pitch,
                                           float (&acc)[kStrip][kVec]) {
  constexpr int PAD = K / 2;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int hr = h + i - PAD;
    if (hr < 0 || hr >= H) continue;
    float taps[K][kVec];
#pragma unroll
    for (int j = 0; j < K; ++j) load_tap(f + (i * K + j) * pitch, taps[j]);
    const T* row = in + hr * st.row;
#pragma unroll
    for (int u = 0; u < kStrip + K - 1; ++u) {
      const int col = w0 - PAD + u;
      float v[kVec] = {0.f, 0.f, 0.f, 0.f};
      if (col >= 0 && col < W) load_full(row + col * st.pixel, v);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int s = u - j;
        if (s >= 0 && s < kStrip) fma_vec(taps[j], v, acc[s]);
      }
    }
  }
}

// Any odd k, n valid channels: each filter row in chunks of up to kTapChunk taps, a chunk's taps in registers.
template <typename T>
__device__ __forceinline__ void conv_strip_generic(const T* __restrict__ in, const NhwcStrides& st, int H, int W,
                                                   int h, int w0, const float* __restrict__ f, int pitch, int k,
                                                   int n, bool vec, float (&acc)[kStrip][kVec]) {
  const int pad = k / 2;
  for (int i = 0; i < k; ++i) {
    const int hr = h + i - pad;
    if (hr < 0 || hr >= H) continue;
    const T* row = in + hr * st.row;
    for (int j0 = 0; j0 < k; j0 += kTapChunk) {
      const int taps_here = min(kTapChunk, k - j0);
      float taps[kTapChunk][kVec];
#pragma unroll
      for (int jj = 0; jj < kTapChunk; ++jj) {
        taps[jj][0] = taps[jj][1] = taps[jj][2] = taps[jj][3] = 0.f;
        if (jj < taps_here) load_tap(f + (i * k + j0 + jj) * pitch, taps[jj]);
      }
#pragma unroll
      for (int u = 0; u < kStrip + kTapChunk - 1; ++u) {
        if (u >= kStrip + taps_here - 1) break;
        const int col = w0 - pad + j0 + u;
        float v[kVec] = {0.f, 0.f, 0.f, 0.f};
        if (col >= 0 && col < W) load_part(row + col * st.pixel, n, vec, v);
#pragma unroll
        for (int jj = 0; jj < kTapChunk; ++jj) {
          const int s = u - jj;  // a padded tap is skipped, not multiplied (0 * inf would be NaN)
          if (s >= 0 && s < kStrip && jj < taps_here) fma_vec(taps[jj], v, acc[s]);
        }
      }
    }
  }
}

// The S vectors of row `row` from column w0 on (zeros past the map's right edge).
template <int S, typename T>
__device__ __forceinline__ void load_strip(const T* __restrict__ row, int64_t pixel, int W, int w0, int n, bool vec,
                                           float (&g)[S][kVec]) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
    g[s][0] = g[s][1] = g[s][2] = g[s][3] = 0.f;
    if (w0 + s < W) load_part(row + (w0 + s) * pixel, n, vec, g[s]);
  }
}

// Weight-gradient contributions of one strip to filter row i: gw[j] += sum_s g[s] * x[h + i - K/2][w0 + s + j - K/2]
// with g the strip's output gradients; `x` points at the thread's channels in one sample.
template <int K, int S, typename T>
__device__ __forceinline__ void weight_grad_row(const float (&g)[S][kVec], const T* __restrict__ x,
                                                const NhwcStrides& st, int H, int W, int h, int w0, int i,
                                                float (&gw)[K][kVec]) {
  constexpr int PAD = K / 2;
  const int hr = h + i - PAD;
  if (hr < 0 || hr >= H) return;
  const T* row = x + hr * st.row;
#pragma unroll
  for (int u = 0; u < S + K - 1; ++u) {
    const int col = w0 - PAD + u;
    float v[kVec] = {0.f, 0.f, 0.f, 0.f};
    if (col >= 0 && col < W) load_full(row + col * st.pixel, v);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int s = u - j;
      if (s >= 0 && s < S) fma_vec(g[s], v, gw[j]);
    }
  }
}

// Any odd k, n valid channels: taps [j0, j0 + kGradTaps) of filter row i into gw[0 .. kGradTaps) (a small chunk
// keeps this path - tails and large k - light in registers).
template <int S, typename T>
__device__ __forceinline__ void weight_grad_row_generic(const float (&g)[S][kVec], const T* __restrict__ x,
                                                        const NhwcStrides& st, int H, int W, int h, int w0, int i,
                                                        int j0, int k, int n, bool vec,
                                                        float (&gw)[kGenericGradTaps][kVec]) {
  const int pad = k / 2;
  const int hr = h + i - pad;
  if (hr < 0 || hr >= H) return;
  const int taps_here = min(kGenericGradTaps, k - j0);
  const T* row = x + hr * st.row;
#pragma unroll
  for (int u = 0; u < S + kGenericGradTaps - 1; ++u) {
    const int col = w0 - pad + j0 + u;
    float v[kVec] = {0.f, 0.f, 0.f, 0.f};
    if (col >= 0 && col < W) load_part(row + col * st.pixel, n, vec, v);
#pragma unroll
    for (int jj = 0; jj < kGenericGradTaps; ++jj) {
      const int s = u - jj;  // a padded tap is skipped, not multiplied (0 * inf would be NaN)
      if (s >= 0 && s < S && jj < taps_here) fma_vec(g[s], v, gw[jj]);
    }
  }
}

}  // namespace depthwise_nhwc
}  // namespace transxnet_ops
