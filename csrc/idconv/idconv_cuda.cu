// IDConv CUDA kernels. One block per (plane, 16x32 output tile): the input tile with its K//2 halo and the
// plane's KxK filter are staged in shared memory (zero padding written there), fp32 accumulation.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "cuda_utils.cuh"
#include "idconv/idconv_launch.h"

namespace transxnet_ops {
namespace {

constexpr int kTileH = 16;
constexpr int kTileW = 32;
constexpr int kThreads = 256;

struct TileGeometry {
  int64_t plane;
  int h0, w0, tile;
};

__device__ __forceinline__ TileGeometry tile_of_block(int64_t H, int64_t W) {
  const int64_t tiles_w = (W + kTileW - 1) / kTileW;
  const int64_t tiles = ((H + kTileH - 1) / kTileH) * tiles_w;
  const int64_t block = blockIdx.x;
  const int tile = static_cast<int>(block % tiles);
  return {block / tiles, static_cast<int>(tile / tiles_w) * kTileH, static_cast<int>(tile % tiles_w) * kTileW, tile};
}

// Stage x[h0 - pad : h0 + kTileH + pad, w0 - pad : w0 + kTileW + pad] (zeros outside the plane).
template <typename T>
__device__ void load_halo_tile(const T* plane_x, float* s_x, int64_t H, int64_t W, int h0, int w0, int K) {
  const int pad = K / 2, SH = kTileH + K - 1, SW = kTileW + K - 1;
  for (int i = threadIdx.x; i < SH * SW; i += blockDim.x) {
    const int64_t ih = h0 + i / SW - pad, iw = w0 + i % SW - pad;
    s_x[i] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? to_float(plane_x[ih * W + iw]) : 0.f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    idconv_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                          T* __restrict__ y, int64_t H, int64_t W, int K, bool flip) {
  extern __shared__ float smem[];
  const TileGeometry t = tile_of_block(H, W);
  const int SW = kTileW + K - 1, KK = K * K;
  float* s_x = smem;
  float* s_w = smem + (kTileH + K - 1) * SW;
  load_halo_tile(x + t.plane * H * W, s_x, H, W, t.h0, t.w0, K);
  for (int i = threadIdx.x; i < KK; i += blockDim.x) s_w[i] = to_float(w[t.plane * KK + (flip ? KK - 1 - i : i)]);
  __syncthreads();

  const float b = bias ? to_float(bias[t.plane]) : 0.f;
  T* plane_y = y + t.plane * H * W;
  for (int o = threadIdx.x; o < kTileH * kTileW; o += blockDim.x) {
    const int r = o / kTileW, c = o % kTileW;
    const int64_t oh = t.h0 + r, ow = t.w0 + c;
    if (oh >= H || ow >= W) continue;
    float acc = b;
    for (int i = 0; i < K; ++i) {
      const float* xr = s_x + (r + i) * SW + c;
      const float* wr = s_w + i * K;
      for (int j = 0; j < K; ++j) acc = fmaf(wr[j], xr[j], acc);
    }
    plane_y[oh * W + ow] = from_float<T>(acc);
  }
}

// Per (plane, tile): partial[tap] = sum over the tile of grad_y * x shifted by tap (taps 0..K*K-1) and
// partial[K*K] = sum of grad_y. Threads are split into (tap, slice) pairs; slices are summed in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    idconv_weight_grad_kernel(const T* __restrict__ grad_y, const T* __restrict__ x, float* __restrict__ partial,
                              int64_t H, int64_t W, int K) {
  extern __shared__ float smem[];
  const TileGeometry t = tile_of_block(H, W);
  const int SW = kTileW + K - 1, KK = K * K, taps = KK + 1;
  float* s_x = smem;
  float* s_gy = s_x + (kTileH + K - 1) * SW;
  float* s_red = s_gy + kTileH * kTileW;
  load_halo_tile(x + t.plane * H * W, s_x, H, W, t.h0, t.w0, K);
  const T* plane_gy = grad_y + t.plane * H * W;
  for (int o = threadIdx.x; o < kTileH * kTileW; o += blockDim.x) {
    const int64_t oh = t.h0 + o / kTileW, ow = t.w0 + o % kTileW;
    s_gy[o] = (oh < H && ow < W) ? to_float(plane_gy[oh * W + ow]) : 0.f;
  }
  __syncthreads();

  const int slices = max(1, static_cast<int>(blockDim.x) / taps);
  for (int task = threadIdx.x; task < taps * slices; task += blockDim.x) {
    const int tap = task % taps, slice = task / taps;
    float acc = 0.f;
    if (tap == KK) {
      for (int o = slice; o < kTileH * kTileW; o += slices) acc += s_gy[o];
    } else {
      const int i = tap / K, j = tap % K;
      for (int o = slice; o < kTileH * kTileW; o += slices) {
        const int r = o / kTileW, c = o % kTileW;
        acc = fmaf(s_gy[o], s_x[(r + i) * SW + c + j], acc);
      }
    }
    s_red[task] = acc;
  }
  __syncthreads();
  for (int tap = threadIdx.x; tap < taps; tap += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < slices; ++s) sum += s_red[s * taps + tap];
    partial[static_cast<int64_t>(blockIdx.x) * taps + tap] = sum;
  }
}

// grad_w / grad_b = sum of the per-tile partials, in tile order.
template <typename T>
__global__ void idconv_reduce_partials_kernel(const float* __restrict__ partial, T* __restrict__ grad_w,
                                              T* __restrict__ grad_b, int64_t planes, int64_t tiles, int K) {
  const int taps = K * K + 1;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= planes * taps) return;
  const int64_t plane = idx / taps;
  const int tap = static_cast<int>(idx % taps);
  float sum = 0.f;
  for (int64_t tile = 0; tile < tiles; ++tile) sum += partial[(plane * tiles + tile) * taps + tap];
  if (tap < K * K) {
    grad_w[plane * K * K + tap] = from_float<T>(sum);
  } else {
    grad_b[plane] = from_float<T>(sum);
  }
}

size_t halo_bytes(int K) { return sizeof(float) * (kTileH + K - 1) * (kTileW + K - 1); }

}  // namespace

int64_t idconv_cuda_tiles(int64_t H, int64_t W) { return ceil_div(H, kTileH) * ceil_div(W, kTileW); }

cudaError_t idconv_cuda_forward(DType dtype, const void* x, const void* w, const void* bias, void* y,
                                int64_t planes, int64_t H, int64_t W, int64_t K, bool flip, cudaStream_t stream) {
  const int64_t blocks = planes * idconv_cuda_tiles(H, W);
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  const size_t shared = halo_bytes(K) + sizeof(float) * K * K;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    idconv_forward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<T*>(y), H, W,
        static_cast<int>(K), flip);
    return cudaGetLastError();
  });
}

cudaError_t idconv_cuda_weight_grad(DType dtype, const void* grad_y, const void* x, float* partial, void* grad_w,
                                    void* grad_b, int64_t planes, int64_t H, int64_t W, int64_t K,
                                    cudaStream_t stream) {
  const int64_t tiles = idconv_cuda_tiles(H, W);
  const int64_t blocks = planes * tiles;
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  const int taps = static_cast<int>(K * K + 1);
  const int red = std::max(taps, (kThreads / taps) * taps);
  const size_t shared = halo_bytes(K) + sizeof(float) * (kTileH * kTileW + red);
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    idconv_weight_grad_kernel<T><<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(
        static_cast<const T*>(grad_y), static_cast<const T*>(x), partial, H, W, static_cast<int>(K));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const int64_t outputs = planes * taps;
    idconv_reduce_partials_kernel<T><<<static_cast<unsigned>(ceil_div(outputs, 256)), 256, 0, stream>>>(
        partial, static_cast<T*>(grad_w), static_cast<T*>(grad_b), planes, tiles, static_cast<int>(K));
    return cudaGetLastError();
  });
}

}  // namespace transxnet_ops
