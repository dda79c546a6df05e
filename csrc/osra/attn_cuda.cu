// OSRA attention CUDA kernels, flash-style: one thread per query row (forward, grad_q, grad_bias) or key row
// (grad_k/grad_v); key/query tiles and the matching bias tile are staged in shared memory, the scores of a
// tile live in registers only. fp32 accumulation; head dims up to 128 (register arrays sized DMAX).
#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "cuda_utils.cuh"
#include "osra/attn_launch.h"

namespace transxnet_ops {
namespace {

constexpr int kRows = 128;  // query rows per block (one per thread)

template <int DMAX>
constexpr int keys_per_tile() { return DMAX >= 128 ? 16 : 32; }

__device__ __forceinline__ int64_t bias_slice(const AttnShape& s, int64_t b, int64_t h) {
  return ((s.Bb == 1 ? 0 : b) * s.Hb + (s.Hb == 1 ? 0 : h)) * s.N * s.M;
}

// Load a (DMAX,) row of a (rows, D) matrix into registers, times `mul`; zeros past D or for invalid rows.
template <typename T, int DMAX>
__device__ __forceinline__ void load_row(const T* base, int64_t row, int64_t D, bool valid, float mul, float* r) {
#pragma unroll
  for (int d = 0; d < DMAX; ++d) r[d] = (valid && d < D) ? mul * to_float(base[row * D + d]) : 0.f;
}

// Stage KEYS rows of k and v (zero-padded) and the bias tile for query rows [n0, n0+kRows), keys [m0, m0+KEYS).
template <typename T, int DMAX, int KEYS>
__device__ __forceinline__ void load_key_tile(const T* k, const T* v, const T* bias_bh, const AttnShape& s,
                                              int64_t bh, int64_t n0, int64_t m0, float (*s_k)[DMAX],
                                              float (*s_v)[DMAX], float (*s_bias)[KEYS + 1]) {
  for (int e = threadIdx.x; e < KEYS * DMAX; e += blockDim.x) {
    const int j = e / DMAX, d = e % DMAX;
    const int64_t m = m0 + j;
    const bool ok = m < s.M && d < s.D;
    s_k[j][d] = ok ? to_float(k[(bh * s.M + m) * s.D + d]) : 0.f;
    s_v[j][d] = ok ? to_float(v[(bh * s.M + m) * s.D + d]) : 0.f;
  }
  for (int e = threadIdx.x; e < kRows * KEYS; e += blockDim.x) {
    const int r = e / KEYS, c = e % KEYS;
    const int64_t n = n0 + r, m = m0 + c;
    s_bias[r][c] = (bias_bh && n < s.N && m < s.M) ? to_float(bias_bh[n * s.M + m]) : 0.f;
  }
}

template <int DMAX>
__device__ __forceinline__ float dot_row(const float* a, const float* b) {
  float acc = 0.f;
#pragma unroll
  for (int d = 0; d < DMAX; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    attn_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ bias, T* __restrict__ out, float* __restrict__ lse, AttnShape s,
                        float scale, int64_t row_blocks) {
  constexpr int KEYS = keys_per_tile<DMAX>();
  __shared__ float s_k[KEYS][DMAX], s_v[KEYS][DMAX], s_bias[kRows][KEYS + 1];
  const int64_t bh = blockIdx.x / row_blocks, n0 = (blockIdx.x % row_blocks) * kRows;
  const int64_t n = n0 + threadIdx.x;
  const bool valid = n < s.N;
  const T* bias_bh = bias ? bias + bias_slice(s, bh / s.H, bh % s.H) : nullptr;

  float qr[DMAX], acc[DMAX];
  load_row<T, DMAX>(q, bh * s.N + n, s.D, valid, scale, qr);
#pragma unroll
  for (int d = 0; d < DMAX; ++d) acc[d] = 0.f;
  float row_max = -INFINITY, row_sum = 0.f;

  for (int64_t m0 = 0; m0 < s.M; m0 += KEYS) {
    __syncthreads();  // the previous tile is consumed
    load_key_tile<T, DMAX, KEYS>(k, v, bias_bh, s, bh, n0, m0, s_k, s_v, s_bias);
    __syncthreads();
    const int keys = static_cast<int>(min64(KEYS, s.M - m0));
    float sc[KEYS];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      sc[j] = j < keys ? dot_row<DMAX>(qr, s_k[j]) + s_bias[threadIdx.x][j] : -INFINITY;
      tile_max = fmaxf(tile_max, sc[j]);
    }
    const float new_max = fmaxf(row_max, tile_max);
    const float alpha = __expf(row_max - new_max);  // 0 on the first tile
    row_sum *= alpha;
#pragma unroll
    for (int d = 0; d < DMAX; ++d) acc[d] *= alpha;
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      if (j < keys) {
        const float p = __expf(sc[j] - new_max);
        row_sum += p;
#pragma unroll
        for (int d = 0; d < DMAX; ++d) acc[d] = fmaf(p, s_v[j][d], acc[d]);
      }
    }
    row_max = new_max;
  }
  if (!valid) return;
  const int64_t row = bh * s.N + n;
  const float inv = 1.f / row_sum;
#pragma unroll
  for (int d = 0; d < DMAX; ++d)
    if (d < s.D) out[row * s.D + d] = from_float<T>(acc[d] * inv);
  lse[row] = row_max + logf(row_sum);
}

// delta = rowsum(grad_out * out), the softmax-backward correction of every query row.
template <typename T>
__global__ void attn_delta_kernel(const T* __restrict__ grad_out, const T* __restrict__ out, float* __restrict__ delta,
                                  int64_t rows, int64_t D) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  float acc = 0.f;
  for (int64_t d = 0; d < D; ++d) acc = fmaf(to_float(grad_out[row * D + d]), to_float(out[row * D + d]), acc);
  delta[row] = acc;
}

// grad_q per query row: dS = p * (dO.v - delta), dq = scale * sum_m dS k.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    attn_grad_q_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       const T* __restrict__ bias, const T* __restrict__ grad_out, const float* __restrict__ lse,
                       const float* __restrict__ delta, T* __restrict__ grad_q, AttnShape s, float scale,
                       int64_t row_blocks) {
  constexpr int KEYS = keys_per_tile<DMAX>();
  __shared__ float s_k[KEYS][DMAX], s_v[KEYS][DMAX], s_bias[kRows][KEYS + 1];
  const int64_t bh = blockIdx.x / row_blocks, n0 = (blockIdx.x % row_blocks) * kRows;
  const int64_t n = n0 + threadIdx.x, row = bh * s.N + n;
  const bool valid = n < s.N;
  const T* bias_bh = bias ? bias + bias_slice(s, bh / s.H, bh % s.H) : nullptr;
  float qr[DMAX], gor[DMAX], dq[DMAX];
  load_row<T, DMAX>(q, row, s.D, valid, scale, qr);
  load_row<T, DMAX>(grad_out, row, s.D, valid, 1.f, gor);
#pragma unroll
  for (int d = 0; d < DMAX; ++d) dq[d] = 0.f;
  const float row_lse = valid ? lse[row] : 0.f, row_delta = valid ? delta[row] : 0.f;

  for (int64_t m0 = 0; m0 < s.M; m0 += KEYS) {
    __syncthreads();
    load_key_tile<T, DMAX, KEYS>(k, v, bias_bh, s, bh, n0, m0, s_k, s_v, s_bias);
    __syncthreads();
    const int keys = static_cast<int>(min64(KEYS, s.M - m0));
#pragma unroll
    for (int j = 0; j < KEYS; ++j) {
      if (j < keys) {
        const float p = __expf(dot_row<DMAX>(qr, s_k[j]) + s_bias[threadIdx.x][j] - row_lse);
        const float ds = p * (dot_row<DMAX>(gor, s_v[j]) - row_delta);
#pragma unroll
        for (int d = 0; d < DMAX; ++d) dq[d] = fmaf(ds, s_k[j][d], dq[d]);
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int d = 0; d < DMAX; ++d)
    if (d < s.D) grad_q[row * s.D + d] = from_float<T>(scale * dq[d]);
}

constexpr int kKeyThreads = 64;   // key rows per grad_k/grad_v block
constexpr int kQueryTile = 32;    // query rows staged per step

// Partial grad_k (without scale) and grad_v of one key block over one chunk of queries.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kKeyThreads)
    attn_grad_kv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ bias, const T* __restrict__ grad_out, const float* __restrict__ lse,
                        const float* __restrict__ delta, float* __restrict__ partial, AttnShape s, float scale,
                        int64_t key_blocks, int64_t chunks, int64_t chunk_rows) {
  __shared__ float s_q[kQueryTile][DMAX], s_do[kQueryTile][DMAX], s_bias[kQueryTile][kKeyThreads + 1];
  __shared__ float s_lse[kQueryTile], s_delta[kQueryTile];
  const int64_t chunk = blockIdx.x % chunks, kb = (blockIdx.x / chunks) % key_blocks;
  const int64_t bh = blockIdx.x / (chunks * key_blocks);
  const int64_t m = kb * kKeyThreads + threadIdx.x;
  const bool valid = m < s.M;
  const T* bias_bh = bias ? bias + bias_slice(s, bh / s.H, bh % s.H) : nullptr;
  float kr[DMAX], vr[DMAX], dk[DMAX], dv[DMAX];
  load_row<T, DMAX>(k, bh * s.M + m, s.D, valid, scale, kr);
  load_row<T, DMAX>(v, bh * s.M + m, s.D, valid, 1.f, vr);
#pragma unroll
  for (int d = 0; d < DMAX; ++d) dk[d] = dv[d] = 0.f;

  const int64_t n_begin = chunk * chunk_rows, n_end = min64(s.N, n_begin + chunk_rows);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kQueryTile) {
    __syncthreads();
    for (int e = threadIdx.x; e < kQueryTile * DMAX; e += blockDim.x) {
      const int r = e / DMAX, d = e % DMAX;
      const int64_t n = n0 + r;
      const bool ok = n < n_end && d < s.D;
      s_q[r][d] = ok ? to_float(q[(bh * s.N + n) * s.D + d]) : 0.f;
      s_do[r][d] = ok ? to_float(grad_out[(bh * s.N + n) * s.D + d]) : 0.f;
    }
    for (int e = threadIdx.x; e < kQueryTile * kKeyThreads; e += blockDim.x) {
      const int r = e / kKeyThreads, c = e % kKeyThreads;
      const int64_t n = n0 + r, mm = kb * kKeyThreads + c;
      s_bias[r][c] = (bias_bh && n < n_end && mm < s.M) ? to_float(bias_bh[n * s.M + mm]) : 0.f;
    }
    for (int r = threadIdx.x; r < kQueryTile; r += blockDim.x) {
      const int64_t n = n0 + r;
      s_lse[r] = n < n_end ? lse[bh * s.N + n] : 0.f;
      s_delta[r] = n < n_end ? delta[bh * s.N + n] : 0.f;
    }
    __syncthreads();
    const int rows = static_cast<int>(min64(kQueryTile, n_end - n0));
    for (int r = 0; r < rows; ++r) {
      const float p = __expf(dot_row<DMAX>(kr, s_q[r]) + s_bias[r][threadIdx.x] - s_lse[r]);
      const float ds = p * (dot_row<DMAX>(vr, s_do[r]) - s_delta[r]);
#pragma unroll
      for (int d = 0; d < DMAX; ++d) {
        dv[d] = fmaf(p, s_do[r][d], dv[d]);
        dk[d] = fmaf(ds, s_q[r][d], dk[d]);
      }
    }
  }
  if (!valid) return;
  const int64_t MD = s.M * s.D;
  float* dk_out = partial + (bh * chunks + chunk) * MD + m * s.D;
  float* dv_out = dk_out + s.B * s.H * chunks * MD;
#pragma unroll
  for (int d = 0; d < DMAX; ++d) {
    if (d < s.D) {
      dk_out[d] = dk[d];
      dv_out[d] = dv[d];
    }
  }
}

// grad_k = scale * sum of the chunk partials, grad_v = sum, in chunk order.
template <typename T>
__global__ void attn_reduce_kv_kernel(const float* __restrict__ partial, T* __restrict__ grad_k,
                                      T* __restrict__ grad_v, AttnShape s, int64_t chunks, float scale) {
  const int64_t MD = s.M * s.D, total = s.B * s.H * MD;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t bh = idx / MD, e = idx % MD;
  float dk = 0.f, dv = 0.f;
  for (int64_t c = 0; c < chunks; ++c) {
    dk += partial[(bh * chunks + c) * MD + e];
    dv += partial[total * chunks + (bh * chunks + c) * MD + e];
  }
  grad_k[idx] = from_float<T>(scale * dk);
  grad_v[idx] = from_float<T>(dv);
}

// grad_bias for one (bias slice, query block, key tile): dS summed over the (b, h) pairs that share the slice,
// in registers, written once.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    attn_grad_bias_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ bias, const T* __restrict__ grad_out, const float* __restrict__ lse,
                          const float* __restrict__ delta, T* __restrict__ grad_bias, AttnShape s, float scale,
                          int64_t row_blocks, int64_t key_tiles) {
  constexpr int KEYS = keys_per_tile<DMAX>();
  __shared__ float s_k[KEYS][DMAX], s_v[KEYS][DMAX], s_bias[kRows][KEYS + 1];
  const int64_t kt = blockIdx.x % key_tiles, rb = (blockIdx.x / key_tiles) % row_blocks;
  const int64_t slice = blockIdx.x / (key_tiles * row_blocks);
  const int64_t bb = slice / s.Hb, hb = slice % s.Hb;
  const int64_t n0 = rb * kRows, m0 = kt * KEYS, n = n0 + threadIdx.x;
  const bool valid = n < s.N;
  const int keys = static_cast<int>(min64(KEYS, s.M - m0));
  float acc[KEYS];
#pragma unroll
  for (int j = 0; j < KEYS; ++j) acc[j] = 0.f;
  const int64_t pairs_b = s.B / s.Bb, pairs_h = s.H / s.Hb;
  for (int64_t pb = 0; pb < pairs_b; ++pb) {
    for (int64_t ph = 0; ph < pairs_h; ++ph) {
      const int64_t b = s.Bb == 1 ? pb : bb, h = s.Hb == 1 ? ph : hb, bh = b * s.H + h, row = bh * s.N + n;
      __syncthreads();
      load_key_tile<T, DMAX, KEYS>(k, v, bias + bias_slice(s, b, h), s, bh, n0, m0, s_k, s_v, s_bias);
      __syncthreads();
      float qr[DMAX], gor[DMAX];
      load_row<T, DMAX>(q, row, s.D, valid, scale, qr);
      load_row<T, DMAX>(grad_out, row, s.D, valid, 1.f, gor);
      const float row_lse = valid ? lse[row] : 0.f, row_delta = valid ? delta[row] : 0.f;
#pragma unroll
      for (int j = 0; j < KEYS; ++j) {
        if (j < keys) {
          const float p = __expf(dot_row<DMAX>(qr, s_k[j]) + s_bias[threadIdx.x][j] - row_lse);
          acc[j] += p * (dot_row<DMAX>(gor, s_v[j]) - row_delta);
        }
      }
    }
  }
  if (!valid) return;
  T* dst = grad_bias + (slice * s.N + n) * s.M + m0;
#pragma unroll
  for (int j = 0; j < KEYS; ++j)
    if (j < keys) dst[j] = from_float<T>(acc[j]);
}

// Calls fn with the register-array size (a power of two >= D, at least 32).
template <typename Fn>
cudaError_t dispatch_head_dim(int64_t D, Fn&& fn) {
  if (D <= 32) return fn(std::integral_constant<int, 32>{});
  if (D <= 64) return fn(std::integral_constant<int, 64>{});
  if (D <= kMaxCudaHeadDim) return fn(std::integral_constant<int, 128>{});
  return cudaErrorInvalidValue;
}

bool fits_grid(int64_t blocks) { return blocks <= INT32_MAX; }

}  // namespace

cudaError_t osra_cuda_forward(DType dtype, const void* q, const void* k, const void* v, const void* bias, void* out,
                              float* lse, const AttnShape& s, float scale, cudaStream_t stream) {
  const int64_t row_blocks = ceil_div(s.N, kRows), blocks = s.B * s.H * row_blocks;
  if (blocks == 0) return cudaSuccess;
  if (!fits_grid(blocks)) return cudaErrorInvalidConfiguration;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return dispatch_head_dim(s.D, [&](auto dmax) {
      attn_forward_kernel<T, decltype(dmax)::value><<<static_cast<unsigned>(blocks), kRows, 0, stream>>>(
          static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(bias),
          static_cast<T*>(out), lse, s, scale, row_blocks);
      return cudaGetLastError();
    });
  });
}

int64_t osra_cuda_query_chunks(const AttnShape& s) {
  // Enough blocks to fill the GPU (~4 waves of 132 SMs) while keeping the partials under ~256 MB.
  const int64_t key_blocks = ceil_div(s.M, kKeyThreads);
  int64_t chunks = std::max<int64_t>(1, ceil_div(528, std::max<int64_t>(1, s.B * s.H * key_blocks)));
  chunks = std::min(chunks, std::max<int64_t>(1, ceil_div(s.N, 4 * kQueryTile)));
  const int64_t per_chunk = 2 * s.B * s.H * s.M * s.D * static_cast<int64_t>(sizeof(float));
  while (chunks > 1 && chunks * per_chunk > (int64_t(256) << 20)) chunks /= 2;
  return chunks;
}

cudaError_t osra_cuda_backward(DType dtype, const void* grad_out, const void* q, const void* k, const void* v,
                               const void* bias, const void* out, const float* lse, float* delta, float* dkv_partial,
                               void* grad_q, void* grad_k, void* grad_v, void* grad_bias, const AttnShape& s,
                               float scale, cudaStream_t stream) {
  const int64_t rows = s.B * s.H * s.N;
  const int64_t row_blocks = ceil_div(s.N, kRows);
  const int64_t key_blocks = ceil_div(s.M, kKeyThreads);
  const int64_t chunks = osra_cuda_query_chunks(s);
  const int64_t chunk_rows = ceil_div(s.N, chunks);
  if (rows == 0 || s.M == 0) return cudaSuccess;
  if (!fits_grid(s.B * s.H * row_blocks) || !fits_grid(s.B * s.H * key_blocks * chunks)) {
    return cudaErrorInvalidConfiguration;
  }
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T *qp = static_cast<const T*>(q), *kp = static_cast<const T*>(k), *vp = static_cast<const T*>(v);
    const T *bp = static_cast<const T*>(bias), *gop = static_cast<const T*>(grad_out);
    attn_delta_kernel<T><<<static_cast<unsigned>(ceil_div(rows, 256)), 256, 0, stream>>>(
        gop, static_cast<const T*>(out), delta, rows, s.D);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    return dispatch_head_dim(s.D, [&](auto dmax) {
      constexpr int DMAX = decltype(dmax)::value;
      attn_grad_q_kernel<T, DMAX><<<static_cast<unsigned>(s.B * s.H * row_blocks), kRows, 0, stream>>>(
          qp, kp, vp, bp, gop, lse, delta, static_cast<T*>(grad_q), s, scale, row_blocks);
      attn_grad_kv_kernel<T, DMAX><<<static_cast<unsigned>(s.B * s.H * key_blocks * chunks), kKeyThreads, 0,
                                     stream>>>(qp, kp, vp, bp, gop, lse, delta, dkv_partial, s, scale, key_blocks,
                                               chunks, chunk_rows);
      attn_reduce_kv_kernel<T><<<static_cast<unsigned>(ceil_div(s.B * s.H * s.M * s.D, 256)), 256, 0, stream>>>(
          dkv_partial, static_cast<T*>(grad_k), static_cast<T*>(grad_v), s, chunks, scale);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess || grad_bias == nullptr) return e;
      const int64_t key_tiles = ceil_div(s.M, keys_per_tile<DMAX>());
      const int64_t blocks = s.Bb * s.Hb * row_blocks * key_tiles;
      if (!fits_grid(blocks)) return cudaErrorInvalidConfiguration;
      attn_grad_bias_kernel<T, DMAX><<<static_cast<unsigned>(blocks), kRows, 0, stream>>>(
          qp, kp, vp, bp, gop, lse, delta, static_cast<T*>(grad_bias), s, scale, row_blocks, key_tiles);
      return cudaGetLastError();
    });
  });
}

}  // namespace transxnet_ops
