// Staging of a block's inputs into shared memory (fp32): zero-filled halo buffers, rows copied in with vector
// loads, the planes' filters (optionally rotated by 180 degrees for grad_x).
#pragma once
#include "cuda_utils.cuh"
#include "depthwise/depthwise_args.h"

namespace transxnet_ops {
namespace depthwise {

// n / d for 0 <= n < 2^31 by a multiply and a shift (Granlund-Montgomery), d >= 1.
struct FastDiv {
  uint32_t d, mul, shift;
  __device__ explicit FastDiv(uint32_t divisor) : d(divisor), shift(0) {
    while ((1ull << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((1ull << 32) * ((1ull << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * mul) >> 32);
    return (hi + n) >> shift;
  }
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Zeroes `floats` floats (a multiple of 4, 16-byte aligned) of shared memory.
__device__ __forceinline__ void zero_fill(float* s, int floats) {
  float4* s4 = reinterpret_cast<float4*>(s);
  for (int i = threadIdx.x; i < floats / 4; i += blockDim.x) s4[i] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// Copies rows [h_lo, h_lo + rows) x columns [w_begin, w_end) of `planes` consecutive planes (plane_stride
// elements apart, row length W) into halo buffers: element (h, w) of plane p lands at
// dst[p * plane_floats + (h - h_lo + dst_row) * pitch + w + col_shift]. One thread per (plane, row); VEC elements
// per load (w_begin, w_end and W are multiples of VEC). With `clip`, columns outside [0, pitch) are dropped
// (the vector-aligned column range may overhang a region of a plane split into several blocks).
template <int VEC, typename T>
__device__ void stage_rows(const T* __restrict__ src, int64_t plane_stride, int W, int planes, int h_lo, int rows,
                           int w_begin, int w_end, float* dst, int plane_floats, int pitch, int dst_row,
                           int col_shift, bool clip) {
  const int tasks = planes * rows;
  if (tasks <= 0) return;
  const FastDiv by_rows(rows);
  for (int e = threadIdx.x; e < tasks; e += blockDim.x) {
    const int p = static_cast<int>(by_rows.div(e)), r = e - p * rows;
    const T* s = src + p * plane_stride + static_cast<int64_t>(h_lo + r) * W;
    float* d = dst + p * plane_floats + (dst_row + r) * pitch + col_shift;
#pragma unroll 2
    for (int w = w_begin; w < w_end; w += VEC) {
      const Pack<T, VEC> v = *reinterpret_cast<const Pack<T, VEC>*>(s + w);
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        const int col = w + u + col_shift;
        if (!clip || (col >= 0 && col < pitch)) d[w + u] = to_float(v.v[u]);
      }
    }
  }
}

// Where a block's region [h0, h0 + region_rows) x [w0, w0 + region_cols) reads its input: the halo buffer row r
// holds input row h0 - k/2 + r, column c holds input column w0 - k/2 + c; only in-plane cells are copied (the rest
// stay zero: the convolution's padding).
struct HaloCopy {
  int h_lo, rows, dst_row;  // input rows [h_lo, h_lo + rows) land at buffer rows dst_row...
  int w_begin, w_end, col_shift;
  bool clip;
};

__device__ __forceinline__ HaloCopy halo_copy(int H, int W, int h0, int w0, int region_rows, int pitch, int k,
                                              int vec) {
  const int pad = k / 2;
  HaloCopy c;
  const int h_first = h0 - pad, w_first = w0 - pad;
  c.h_lo = max(0, h_first);
  c.rows = min(H, h_first + region_rows + k - 1) - c.h_lo;
  c.dst_row = c.h_lo - h_first;
  const int w_lo = max(0, w_first), w_hi = min(W, w_first + pitch);
  c.w_begin = w_lo / vec * vec;
  c.w_end = min(W, (w_hi + vec - 1) / vec * vec);
  c.col_shift = -w_first;
  c.clip = c.w_begin < w_lo || c.w_end > w_hi;
  return c;
}

template <typename T>
__device__ void stage_halo(const T* src, int64_t plane_stride, int W, int planes, const HaloCopy& c, int vec,
                           float* dst, int plane_floats, int pitch) {
  switch (vec) {
    case 8:
      if constexpr (sizeof(T) == 2) {
        stage_rows<8>(src, plane_stride, W, planes, c.h_lo, c.rows, c.w_begin, c.w_end, dst, plane_floats, pitch,
                      c.dst_row, c.col_shift, c.clip);
        return;
      }
      break;
    case 4:
      stage_rows<4>(src, plane_stride, W, planes, c.h_lo, c.rows, c.w_begin, c.w_end, dst, plane_floats, pitch,
                    c.dst_row, c.col_shift, c.clip);
      return;
    case 2:
      stage_rows<2>(src, plane_stride, W, planes, c.h_lo, c.rows, c.w_begin, c.w_end, dst, plane_floats, pitch,
                    c.dst_row, c.col_shift, c.clip);
      return;
    default: break;
  }
  stage_rows<1>(src, plane_stride, W, planes, c.h_lo, c.rows, c.w_begin, c.w_end, dst, plane_floats, pitch,
                c.dst_row, c.col_shift, c.clip);
}

// Filters of `planes` consecutive planes (k*k taps each, contiguous) into s_w[plane][i][j], rows padded with zeros
// to round_up4(k) columns; `flip` rotates each filter by 180 degrees (grad_x is the correlation of grad_y with
// the rotated filter). KC: the kernel size when known at compile time, else 0 and k is read at run time.
template <int KC, typename T>
__device__ void stage_weights(const T* __restrict__ w, int planes, int k_runtime, bool flip, float* s_w) {
  const int k = KC > 0 ? KC : k_runtime;
  const int kp = round_up4(k);
  for (int e = threadIdx.x; e < planes * k; e += blockDim.x) {
    const int p = e / k, i = e - p * k;
    const T* src = w + static_cast<int64_t>(p) * k * k + (flip ? k - 1 - i : i) * k;
    float* d = s_w + e * kp;
    if constexpr (KC > 0) {
#pragma unroll
      for (int j = 0; j < round_up4(KC); ++j) d[j] = j < KC ? to_float(src[flip ? KC - 1 - j : j]) : 0.f;
    } else {
      for (int j = 0; j < kp; ++j) d[j] = j < k ? to_float(src[flip ? k - 1 - j : j]) : 0.f;
    }
  }
}

}  // namespace depthwise
}  // namespace transxnet_ops
