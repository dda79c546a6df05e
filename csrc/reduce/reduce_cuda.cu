// OSRA reduce path on CUDA (contract: reduce/reduce.h; launchers: reduce_launch.h).
//
// Every map kernel runs one block per (channel c, sample b, output tile of up to 16 x 16); the block's index
// within its channel, p = b * tiles + tile, is where it writes its fp32 partials, and every per-channel sum
// combines those partials in index order (deterministic, no atomics).
//   eval forward      local_conv_kernel<T, false>: u on the tile + 1-pixel halo straight from x, BN folded,
//                     s in shared memory, then the 3x3 conv + residual.
//   training forward  conv_moments_kernel (u, moments of u) -> gelu_moments_kernel (BN1 from the combined
//                     moments, moments of w2 * GELU) -> local_conv_kernel<T, true> (BN2, conv + residual).
//   backward          bwd_local_kernel (ds = conv3x3^T(dy) + dy; eval: du as well) [-> training: bwd_bn2_kernel
//                     (BN2's batch-statistic terms, dz)] -> bwd_conv_kernel (du, grad_x gathered per input pixel,
//                     grad conv1 per tap) -> bwd_finish_kernel (one block per channel sums the partials in order).
#include <type_traits>

#include "reduce/reduce_common.cuh"
#include "reduce/reduce_launch.h"

namespace transxnet_ops {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = 16;  // output tile edge
constexpr int kRegion = (kTile + 2) * (kTile + 2);

// Backward partial slots per (channel, program); conv1's taps follow from kDw1.
enum Slot : int { kDw3 = 0, kDb3 = 9, kDbeta2 = 10, kDgamma2 = 11, kDw2 = 12, kDbeta1 = 13, kDgamma1 = 14, kDw1 = 16 };

struct Tiling {
  int64_t B, C, H, W, Ho, Wo;
  int sr, k, pad;
  int th, tw, tiles_w, tiles;  // tile size, tiles per row of tiles, tiles per plane
  __host__ __device__ int64_t P() const { return B * tiles; }  // programs per channel
  __host__ __device__ int64_t blocks() const { return B * C * tiles; }
  __host__ __device__ int taps() const { return k * k; }
  __host__ __device__ int partial_slots() const { return kDw1 + k * k; }
};

Tiling tiling_of(const ReduceShape& s) {
  Tiling t{s.B, s.C, s.H, s.W, s.Ho, s.Wo, static_cast<int>(s.sr), static_cast<int>(s.sr + 3),
           static_cast<int>((s.sr + 3) / 2)};
  t.th = static_cast<int>(s.Ho < kTile ? s.Ho : kTile);
  t.tw = static_cast<int>(s.Wo < kTile ? s.Wo : kTile);
  t.tiles_w = static_cast<int>(ceil_div(s.Wo, t.tw));
  t.tiles = static_cast<int>(ceil_div(s.Ho, t.th)) * t.tiles_w;
  return t;
}

// This block's channel, sample, partial index and tile (origin oh0/ow0, valid extent th x tw).
struct Program {
  int64_t c, b, p;
  int64_t oh0, ow0;
  int th, tw;
  __device__ explicit Program(const Tiling& t) {
    const int64_t i = blockIdx.x;
    const int tile = static_cast<int>(i % t.tiles);
    b = (i / t.tiles) % t.B;
    c = i / (static_cast<int64_t>(t.tiles) * t.B);
    p = b * t.tiles + tile;
    oh0 = static_cast<int64_t>(tile / t.tiles_w) * t.th;
    ow0 = static_cast<int64_t>(tile % t.tiles_w) * t.tw;
    th = static_cast<int>(min64(t.th, t.Ho - oh0));
    tw = static_cast<int>(min64(t.tw, t.Wo - ow0));
  }
  __device__ int64_t plane(const Tiling& t) const { return b * t.C + c; }
};

// k x k taps of conv1 for channel c into shared memory (fp32).
__device__ __forceinline__ void load_taps(float* taps, ParamRef w1, int64_t c, int n) {
  for (int i = threadIdx.x; i < n; i += kThreads) taps[i] = load_param(w1, c * n + i);
}

// u = the strided conv at output (oh, ow) of one x plane, rounded to T as the official conv writes it.
template <typename T>
__device__ __forceinline__ float strided_conv(const T* __restrict__ xp, const float* taps, const Tiling& t, int64_t oh, int64_t ow) {
  const int64_t ih0 = oh * t.sr - t.pad, iw0 = ow * t.sr - t.pad;
  float acc = 0.0f;
  for (int i = 0; i < t.k; ++i) {
    const int64_t ih = ih0 + i;
    if (ih < 0 || ih >= t.H) continue;
    const T* row = xp + ih * t.W;
    for (int j = 0; j < t.k; ++j) {
      const int64_t iw = iw0 + j;
      if (iw >= 0 && iw < t.W) acc = fmaf(taps[i * t.k + j], to_float(__ldg(row + iw)), acc);
    }
  }
  return round_to<T>(acc);
}

struct Affine {  // y = scale * x + shift: a BatchNorm with its statistics folded
  float scale, shift;
  __device__ float operator()(float v) const { return fmaf(scale, v, shift); }
};

__device__ __forceinline__ Affine fold_bn(float gamma, float beta, float mean, float var, float eps) {
  const float scale = gamma * rsqrtf(var + eps);
  return {scale, beta - mean * scale};
}

// (count, mean, M2) of vals[0..count) (this thread's entries are e = threadIdx.x + i * kThreads) at out[0..3).
__device__ __forceinline__ void store_tile_moments(const float* vals, int count, float* scratch, float* out) {
  float sum = 0.0f;
  for (int e = threadIdx.x; e < count; e += kThreads) sum += vals[e];
  const float mean = block_sum<kThreads>(sum, scratch) / count;
  float m2 = 0.0f;
  for (int e = threadIdx.x; e < count; e += kThreads) m2 += (vals[e] - mean) * (vals[e] - mean);
  m2 = block_sum<kThreads>(m2, scratch);
  if (threadIdx.x == 0) {
    out[0] = static_cast<float>(count);
    out[1] = mean;
    out[2] = m2;
  }
}

struct Moments {
  float n, mean, m2;
};

// Chan's combination of a channel's P (count, mean, M2) partials: the same fixed order in every block.
__device__ __forceinline__ Moments combine_moments(const float* part, int64_t P, float* scratch) {
  float n = 0.0f, sum = 0.0f;
  for (int64_t q = threadIdx.x; q < P; q += kThreads) {
    n += part[q * 3];
    sum += part[q * 3] * part[q * 3 + 1];
  }
  n = block_sum<kThreads>(n, scratch);
  const float mean = block_sum<kThreads>(sum, scratch) / n;
  float m2 = 0.0f;
  for (int64_t q = threadIdx.x; q < P; q += kThreads) {
    const float d = part[q * 3 + 1] - mean;
    m2 += part[q * 3 + 2] + part[q * 3] * d * d;
  }
  return {n, mean, block_sum<kThreads>(m2, scratch)};
}

// Sum over a channel's P backward partials of one slot, in the same fixed order in every block.
__device__ __forceinline__ float combine_slot(const float* part, int64_t P, int slots, int slot, float* scratch) {
  float sum = 0.0f;
  for (int64_t q = threadIdx.x; q < P; q += kThreads) sum += part[q * slots + slot];
  return block_sum<kThreads>(sum, scratch);
}

// ------------------------------------------------------------------------------------------ forward
// Training launch 1: u (rounded to T) and the tile's moments of u at moments1[c, p].
template <typename T>
__global__ void __launch_bounds__(kThreads, 4) conv_moments_kernel(Tiling t, ParamRef w1, const T* __restrict__ x,
                                                               T* __restrict__ u, float* __restrict__ moments1) {
  TXN_DYNAMIC_SMEM(float, taps);
  __shared__ float vals[kTile * kTile];
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  load_taps(taps, w1, pr.c, t.taps());
  __syncthreads();
  const T* xp = x + pr.plane(t) * t.H * t.W;
  T* up = u + pr.plane(t) * t.Ho * t.Wo;
  for (int e = threadIdx.x; e < pr.th * pr.tw; e += kThreads) {
    const int64_t oh = pr.oh0 + e / pr.tw, ow = pr.ow0 + e % pr.tw;
    const float v = strided_conv<T>(xp, taps, t, oh, ow);
    up[oh * t.Wo + ow] = from_float<T>(v);
    vals[e] = v;
  }
  store_tile_moments(vals, pr.th * pr.tw, scratch, moments1 + (pr.c * t.P() + pr.p) * 3);
}

// Training launch 2: BN1 with the batch statistics, v = w2 * GELU(BN1(u)), the tile's moments of v; the
// channel's first program writes stats rows 0-2.
template <typename T>
__global__ void __launch_bounds__(kThreads) gelu_moments_kernel(Tiling t, ReduceParamRefs prm,
                                                               const T* __restrict__ u,
                                                               const float* __restrict__ moments1,
                                                               float* __restrict__ moments2, float* __restrict__ stats) {
  __shared__ float vals[kTile * kTile];
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  const Moments m = combine_moments(moments1 + pr.c * t.P() * 3, t.P(), scratch);
  const float var = m.m2 / m.n;
  const Affine bn1 = fold_bn(load_param(prm.bn1_weight, pr.c), load_param(prm.bn1_bias, pr.c), m.mean, var, prm.eps1);
  const float w2 = load_param(prm.conv2_weight, pr.c);
  const T* up = u + pr.plane(t) * t.Ho * t.Wo;
  for (int e = threadIdx.x; e < pr.th * pr.tw; e += kThreads) {
    const int64_t oh = pr.oh0 + e / pr.tw, ow = pr.ow0 + e % pr.tw;
    vals[e] = w2 * gelu(bn1(to_float(up[oh * t.Wo + ow])));
  }
  store_tile_moments(vals, pr.th * pr.tw, scratch, moments2 + (pr.c * t.P() + pr.p) * 3);
  if (pr.p == 0 && threadIdx.x == 0) {
    stats[pr.c] = m.mean;
    stats[t.C + pr.c] = var;
    stats[2 * t.C + pr.c] = m.m2 / (m.n - 1.0f);
  }
}

// s = BN2(w2 * GELU(BN1(u))) on the tile + 1-pixel halo (0 outside the map: local_conv's zero padding), then
// out = local_conv3x3(s) + local_bias + s. Eval (kTraining false): u from x (written to u_out at the tile when
// non-null), the running statistics, all six stats rows from the channel's first program. Training: u from
// u_in, BN1 from stats rows 0-1 (launch 2), BN2 from the combined moments2; stats rows 3-5.
template <typename T, bool kTraining>
__global__ void __launch_bounds__(kThreads) local_conv_kernel(Tiling t, ReduceParamRefs prm, const T* __restrict__ x,
                                                             const T* __restrict__ u_in, T* __restrict__ u_out,
                                                             const float* __restrict__ moments2,
                                                             float* __restrict__ stats, T* __restrict__ out) {
  TXN_DYNAMIC_SMEM(float, taps);
  __shared__ float s_region[kRegion];
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  const int64_t c = pr.c;
  float mean1, var1, mean2, var2;
  if (kTraining) {
    mean1 = stats[c];
    var1 = stats[t.C + c];
    const Moments m = combine_moments(moments2 + c * t.P() * 3, t.P(), scratch);
    mean2 = m.mean;
    var2 = m.m2 / m.n;
    if (pr.p == 0 && threadIdx.x == 0) {
      stats[3 * t.C + c] = mean2;
      stats[4 * t.C + c] = var2;
      stats[5 * t.C + c] = m.m2 / (m.n - 1.0f);
    }
  } else {
    mean1 = load_param(prm.bn1_running_mean, c);
    var1 = load_param(prm.bn1_running_var, c);
    mean2 = load_param(prm.bn2_running_mean, c);
    var2 = load_param(prm.bn2_running_var, c);
    if (pr.p == 0 && threadIdx.x == 0) {
      stats[c] = mean1;
      stats[t.C + c] = var1;
      stats[2 * t.C + c] = var1;
      stats[3 * t.C + c] = mean2;
      stats[4 * t.C + c] = var2;
      stats[5 * t.C + c] = var2;
    }
    load_taps(taps, prm.conv1_weight, c, t.taps());
    __syncthreads();
  }
  const Affine bn1 = fold_bn(load_param(prm.bn1_weight, c), load_param(prm.bn1_bias, c), mean1, var1, prm.eps1);
  const Affine bn2 = fold_bn(load_param(prm.bn2_weight, c), load_param(prm.bn2_bias, c), mean2, var2, prm.eps2);
  const float w2 = load_param(prm.conv2_weight, c);

  const int rw = pr.tw + 2;
  const int64_t map = pr.plane(t) * t.Ho * t.Wo;
  for (int r = threadIdx.x; r < (pr.th + 2) * rw; r += kThreads) {
    const int64_t oh = pr.oh0 - 1 + r / rw, ow = pr.ow0 - 1 + r % rw;
    float s = 0.0f;
    if (oh >= 0 && oh < t.Ho && ow >= 0 && ow < t.Wo) {
      float uv;
      if (kTraining) {
        uv = to_float(u_in[map + oh * t.Wo + ow]);
      } else {
        uv = strided_conv<T>(x + pr.plane(t) * t.H * t.W, taps, t, oh, ow);
        const bool interior = r / rw >= 1 && r / rw <= pr.th && r % rw >= 1 && r % rw <= pr.tw;
        if (u_out != nullptr && interior) u_out[map + oh * t.Wo + ow] = from_float<T>(uv);
      }
      s = bn2(w2 * gelu(bn1(uv)));
    }
    s_region[r] = s;
  }
  __syncthreads();
  float w3[9];
#pragma unroll
  for (int d = 0; d < 9; ++d) w3[d] = load_param(prm.local_weight, c * 9 + d);
  const float bias3 = load_param(prm.local_bias, c);
  for (int e = threadIdx.x; e < pr.th * pr.tw; e += kThreads) {
    const int rr = e / pr.tw + 1, cc = e % pr.tw + 1;
    float acc = bias3 + s_region[rr * rw + cc];  // the "+ s" residual
#pragma unroll
    for (int d = 0; d < 9; ++d) acc = fmaf(w3[d], s_region[(rr + d / 3 - 1) * rw + cc + d % 3 - 1], acc);
    out[map + (pr.oh0 + rr - 1) * t.Wo + pr.ow0 + cc - 1] = from_float<T>(acc);
  }
}

// ------------------------------------------------------------------------------------------ backward
// Per-channel values the backward recomputes from u: u_hat, z = BN1(u), GELU(z), v_hat.
struct Recompute {
  float mean1, r1, mean2, r2, gamma1, beta1, w2, gamma2, beta2;
  __device__ Recompute(const ReduceParamRefs& prm, const float* stats, int64_t C, int64_t c) {
    mean1 = stats[c];
    r1 = rsqrtf(stats[C + c] + prm.eps1);
    mean2 = stats[3 * C + c];
    r2 = rsqrtf(stats[4 * C + c] + prm.eps2);
    gamma1 = load_param(prm.bn1_weight, c);
    beta1 = load_param(prm.bn1_bias, c);
    w2 = load_param(prm.conv2_weight, c);
    gamma2 = load_param(prm.bn2_weight, c);
    beta2 = load_param(prm.bn2_bias, c);
  }
  struct Values {
    float u_hat, z, g, v_hat;
  };
  __device__ Values at(float u) const {
    Values v;
    v.u_hat = (u - mean1) * r1;
    v.z = fmaf(gamma1, v.u_hat, beta1);
    v.g = gelu(v.z);
    v.v_hat = (w2 * v.g - mean2) * r2;
    return v;
  }
};

// Launch 1: ds = conv3x3^T(dy) + dy on the tile (dy and s on the 1-pixel halo), partials of grad local
// weight/bias and of BN2's sums. Training writes ds to dbuf; eval goes on to du (BN2, w2, GELU, BN1 with the
// running statistics: no batch terms) and writes du, with the partials of grad w2 and BN1's sums.
template <typename T, bool kTraining>
__global__ void __launch_bounds__(kThreads) bwd_local_kernel(Tiling t, ReduceParamRefs prm, const T* __restrict__ dy,
                                                            const T* __restrict__ u, const float* __restrict__ stats,
                                                            float* __restrict__ dbuf, float* __restrict__ partials) {
  __shared__ float dy_region[kRegion];
  __shared__ float s_region[kRegion];
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  const int64_t c = pr.c;
  const Recompute rc(prm, stats, t.C, c);
  const int rw = pr.tw + 2;
  const int64_t map = pr.plane(t) * t.Ho * t.Wo;
  for (int r = threadIdx.x; r < (pr.th + 2) * rw; r += kThreads) {
    const int64_t oh = pr.oh0 - 1 + r / rw, ow = pr.ow0 - 1 + r % rw;
    float dyv = 0.0f, s = 0.0f;
    if (oh >= 0 && oh < t.Ho && ow >= 0 && ow < t.Wo) {
      dyv = to_float(dy[map + oh * t.Wo + ow]);
      s = fmaf(rc.gamma2, rc.at(to_float(u[map + oh * t.Wo + ow])).v_hat, rc.beta2);
    }
    dy_region[r] = dyv;
    s_region[r] = s;
  }
  __syncthreads();
  float w3[9], dw3[9];
#pragma unroll
  for (int d = 0; d < 9; ++d) {
    w3[d] = load_param(prm.local_weight, c * 9 + d);
    dw3[d] = 0.0f;
  }
  float db3 = 0.0f, dbeta2 = 0.0f, dgamma2 = 0.0f, dw2 = 0.0f, dbeta1 = 0.0f, dgamma1 = 0.0f;
  for (int e = threadIdx.x; e < pr.th * pr.tw; e += kThreads) {
    const int rr = e / pr.tw + 1, cc = e % pr.tw + 1;
    const float dyo = dy_region[rr * rw + cc];
    float ds = dyo;
#pragma unroll
    for (int d = 0; d < 9; ++d) {
      const int di = d / 3 - 1, dj = d % 3 - 1;
      ds = fmaf(w3[d], dy_region[(rr - di) * rw + cc - dj], ds);
      dw3[d] = fmaf(dyo, s_region[(rr + di) * rw + cc + dj], dw3[d]);
    }
    db3 += dyo;
    const int64_t o = map + (pr.oh0 + rr - 1) * t.Wo + pr.ow0 + cc - 1;
    const Recompute::Values v = rc.at(to_float(u[o]));
    dbeta2 += ds;
    dgamma2 = fmaf(ds, v.v_hat, dgamma2);
    if (kTraining) {
      dbuf[o] = ds;
    } else {
      const float dv = rc.gamma2 * rc.r2 * ds;
      dw2 = fmaf(dv, v.g, dw2);
      const float dz = rc.w2 * dv * gelu_grad(v.z);
      dbeta1 += dz;
      dgamma1 = fmaf(dz, v.u_hat, dgamma1);
      dbuf[o] = rc.gamma1 * rc.r1 * dz;
    }
  }
  float* out = partials + (c * t.P() + pr.p) * t.partial_slots();
  // training leaves the last three slots to bwd_bn2_kernel
  constexpr int kSums = kTraining ? kDw2 : kDgamma1 + 1;
  float sums[kDgamma1 + 1];
#pragma unroll
  for (int d = 0; d < 9; ++d) sums[kDw3 + d] = dw3[d];
  sums[kDb3] = db3;
  sums[kDbeta2] = dbeta2;
  sums[kDgamma2] = dgamma2;
  sums[kDw2] = dw2;
  sums[kDbeta1] = dbeta1;
  sums[kDgamma1] = dgamma1;
#pragma unroll
  for (int i = 0; i < kSums; ++i) {
    const float total = block_sum<kThreads>(sums[i], scratch);
    if (threadIdx.x == 0) out[i] = total;
  }
}

// Training launch 2: BN2's batch-statistic terms (the channel's grad beta2/gamma2 combined from launch 1),
// dv, then dz = w2 * dv * GELU'(z) over ds in dbuf; partials of grad w2 and BN1's sums.
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_bn2_kernel(Tiling t, ReduceParamRefs prm, const T* __restrict__ u,
                                                          const float* __restrict__ stats, float* __restrict__ dbuf,
                                                          float* __restrict__ partials) {
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  const int64_t c = pr.c;
  const int slots = t.partial_slots();
  const float* channel = partials + c * t.P() * slots;
  const float dbeta2 = combine_slot(channel, t.P(), slots, kDbeta2, scratch);
  const float dgamma2 = combine_slot(channel, t.P(), slots, kDgamma2, scratch);
  const Recompute rc(prm, stats, t.C, c);
  const float inv_n = 1.0f / static_cast<float>(t.B * t.Ho * t.Wo);
  const int64_t map = pr.plane(t) * t.Ho * t.Wo;
  float dw2 = 0.0f, dbeta1 = 0.0f, dgamma1 = 0.0f;
  for (int e = threadIdx.x; e < pr.th * pr.tw; e += kThreads) {
    const int64_t o = map + (pr.oh0 + e / pr.tw) * t.Wo + pr.ow0 + e % pr.tw;
    const Recompute::Values v = rc.at(to_float(u[o]));
    const float dv = rc.gamma2 * rc.r2 * (dbuf[o] - (dbeta2 + v.v_hat * dgamma2) * inv_n);
    dw2 = fmaf(dv, v.g, dw2);
    const float dz = rc.w2 * dv * gelu_grad(v.z);
    dbuf[o] = dz;
    dbeta1 += dz;
    dgamma1 = fmaf(dz, v.u_hat, dgamma1);
  }
  float* out = partials + (c * t.P() + pr.p) * slots;
  dw2 = block_sum<kThreads>(dw2, scratch);
  dbeta1 = block_sum<kThreads>(dbeta1, scratch);
  dgamma1 = block_sum<kThreads>(dgamma1, scratch);
  if (threadIdx.x == 0) {
    out[kDw2] = dw2;
    out[kDbeta1] = dbeta1;
    out[kDgamma1] = dgamma1;
  }
}

// Last map launch: du on the tile and the 2 rows/columns before it (eval: from dbuf; training: from dz in dbuf
// with BN1's batch-statistic terms), then
//   grad_x for the input pixels this tile owns (those whose last reading output row/column, clamped to the map,
//   falls in the tile): a gather over the <= 3 x 3 outputs that read each pixel, each pixel written once;
//   grad conv1 partials: one thread per tap sums du * x over the tile's outputs.
template <typename T, bool kTraining>
__global__ void __launch_bounds__(kThreads) bwd_conv_kernel(Tiling t, ReduceParamRefs prm, const T* __restrict__ x,
                                                           const T* __restrict__ u, const float* __restrict__ stats,
                                                           const float* __restrict__ dbuf, float* partials,
                                                           T* __restrict__ grad_x) {
  TXN_DYNAMIC_SMEM(float, taps);
  __shared__ float du_region[kRegion];
  __shared__ float scratch[kThreads / 32];
  const Program pr(t);
  const int64_t c = pr.c;
  const int slots = t.partial_slots();
  float dbeta1 = 0.0f, dgamma1 = 0.0f, mean1 = 0.0f, r1 = 0.0f, scale = 0.0f;
  if (kTraining) {
    const float* channel = partials + c * t.P() * slots;
    dbeta1 = combine_slot(channel, t.P(), slots, kDbeta1, scratch);
    dgamma1 = combine_slot(channel, t.P(), slots, kDgamma1, scratch);
    mean1 = stats[c];
    r1 = rsqrtf(stats[t.C + c] + prm.eps1);
    scale = load_param(prm.bn1_weight, c) * r1;
  }
  const float inv_n = 1.0f / static_cast<float>(t.B * t.Ho * t.Wo);
  load_taps(taps, prm.conv1_weight, c, t.taps());
  const int rw = pr.tw + 2;
  const int64_t map = pr.plane(t) * t.Ho * t.Wo;
  for (int r = threadIdx.x; r < (pr.th + 2) * rw; r += kThreads) {
    const int64_t oh = pr.oh0 - 2 + r / rw, ow = pr.ow0 - 2 + r % rw;
    float du = 0.0f;
    if (oh >= 0 && oh < t.Ho && ow >= 0 && ow < t.Wo) {
      const int64_t o = map + oh * t.Wo + ow;
      if (kTraining) {
        const float u_hat = (to_float(u[o]) - mean1) * r1;
        du = scale * (dbuf[o] - (dbeta1 + u_hat * dgamma1) * inv_n);
      } else {
        du = dbuf[o];
      }
    }
    du_region[r] = du;
  }
  __syncthreads();

  const int64_t ih_begin = pr.oh0 == 0 ? 0 : pr.oh0 * t.sr - t.pad;
  const int64_t ih_end = pr.oh0 + pr.th == t.Ho ? t.H : (pr.oh0 + pr.th) * t.sr - t.pad;
  const int64_t iw_begin = pr.ow0 == 0 ? 0 : pr.ow0 * t.sr - t.pad;
  const int64_t iw_end = pr.ow0 + pr.tw == t.Wo ? t.W : (pr.ow0 + pr.tw) * t.sr - t.pad;
  const int64_t owned_w = iw_end - iw_begin;
  T* gx = grad_x + pr.plane(t) * t.H * t.W;
  for (int64_t e = threadIdx.x; e < (ih_end - ih_begin) * owned_w; e += kThreads) {
    const int64_t ih = ih_begin + e / owned_w, iw = iw_begin + e % owned_w;
    const int64_t qh = (ih + t.pad) / t.sr, qw = (iw + t.pad) / t.sr;  // last outputs reading the pixel
    float acc = 0.0f;
    for (int64_t oh = qh < 2 ? 0 : qh - 2; oh <= min64(qh, t.Ho - 1); ++oh) {
      const int64_t i = ih + t.pad - oh * t.sr;
      if (i >= t.k) continue;
      for (int64_t ow = qw < 2 ? 0 : qw - 2; ow <= min64(qw, t.Wo - 1); ++ow) {
        const int64_t j = iw + t.pad - ow * t.sr;
        if (j >= t.k) continue;
        acc = fmaf(du_region[(oh - pr.oh0 + 2) * rw + ow - pr.ow0 + 2], taps[i * t.k + j], acc);
      }
    }
    gx[ih * t.W + iw] = from_float<T>(acc);
  }

  const T* xp = x + pr.plane(t) * t.H * t.W;
  float* out = partials + (c * t.P() + pr.p) * slots + kDw1;
  for (int tap = threadIdx.x; tap < t.taps(); tap += kThreads) {
    const int i = tap / t.k, j = tap % t.k;
    float acc = 0.0f;
    for (int e = 0; e < pr.th * pr.tw; ++e) {
      const int eh = e / pr.tw, ew = e % pr.tw;
      const int64_t ih = (pr.oh0 + eh) * t.sr - t.pad + i, iw = (pr.ow0 + ew) * t.sr - t.pad + j;
      if (ih >= 0 && ih < t.H && iw >= 0 && iw < t.W)
        acc = fmaf(du_region[(eh + 2) * rw + ew + 2], to_float(__ldg(xp + ih * t.W + iw)), acc);
    }
    out[tap] = acc;
  }
}

// Last launch: one block per channel sums each partial slot over the channel's programs in order and writes
// the parameter gradients in their own dtypes.
__global__ void __launch_bounds__(kThreads) bwd_finish_kernel(Tiling t, const float* __restrict__ partials,
                                                             ReduceGradRefs g) {
  const int64_t c = blockIdx.x;
  const int slots = t.partial_slots();
  const float* channel = partials + c * t.P() * slots;
  for (int slot = threadIdx.x; slot < slots; slot += kThreads) {
    if (slot == kDw1 - 1) continue;  // unused padding slot
    float sum = 0.0f;
    for (int64_t q = 0; q < t.P(); ++q) sum += channel[q * slots + slot];
    if (slot >= kDw1) {
      store_grad(g.conv1_weight, c * t.taps() + slot - kDw1, sum);
    } else if (slot < kDb3) {
      store_grad(g.local_weight, c * 9 + slot, sum);
    } else {
      const GradRef per_channel = slot == kDb3       ? g.local_bias
                                  : slot == kDbeta2  ? g.bn2_bias
                                  : slot == kDgamma2 ? g.bn2_weight
                                  : slot == kDw2     ? g.conv2_weight
                                  : slot == kDbeta1  ? g.bn1_bias
                                                     : g.bn1_weight;
      store_grad(per_channel, c, sum);
    }
  }
}

}  // namespace

int64_t osra_reduce_cuda_forward_workspace(const ReduceShape& s, bool training) {
  return training ? 2 * s.C * tiling_of(s).P() * 3 : 0;
}

int64_t osra_reduce_cuda_backward_workspace(const ReduceShape& s) {
  const Tiling t = tiling_of(s);
  return s.B * s.C * s.Ho * s.Wo + s.C * t.P() * t.partial_slots();
}

cudaError_t osra_reduce_cuda_forward(DType dtype, const ReduceShape& s, const ReduceParamRefs& p, bool training,
                                     const void* x, void* out, void* u, float* stats, float* workspace,
                                     cudaStream_t stream) {
  const Tiling t = tiling_of(s);
  const unsigned blocks = static_cast<unsigned>(t.blocks());
  const size_t taps_bytes = sizeof(float) * t.taps();
  float* moments1 = workspace;
  float* moments2 = training ? workspace + s.C * t.P() * 3 : nullptr;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = static_cast<const T*>(x);
    T* up = static_cast<T*>(u);
    T* op = static_cast<T*>(out);
    if (!training) {
      local_conv_kernel<T, false><<<blocks, kThreads, taps_bytes, stream>>>(t, p, xp, nullptr, up, nullptr, stats, op);
      return cudaGetLastError();
    }
    conv_moments_kernel<T><<<blocks, kThreads, taps_bytes, stream>>>(t, p.conv1_weight, xp, up, moments1);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    gelu_moments_kernel<T><<<blocks, kThreads, 0, stream>>>(t, p, up, moments1, moments2, stats);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    local_conv_kernel<T, true><<<blocks, kThreads, 0, stream>>>(t, p, nullptr, up, nullptr, moments2, stats, op);
    return cudaGetLastError();
  });
}

cudaError_t osra_reduce_cuda_backward(DType dtype, const ReduceShape& s, const ReduceParamRefs& p,
                                      const ReduceGradRefs& g, bool training, const void* grad_out, const void* x,
                                      const void* u, const float* stats, void* grad_x, float* workspace,
                                      cudaStream_t stream) {
  const Tiling t = tiling_of(s);
  const unsigned blocks = static_cast<unsigned>(t.blocks());
  const size_t taps_bytes = sizeof(float) * t.taps();
  float* dbuf = workspace;
  float* partials = workspace + s.B * s.C * s.Ho * s.Wo;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* dyp = static_cast<const T*>(grad_out);
    const T* xp = static_cast<const T*>(x);
    const T* up = static_cast<const T*>(u);
    T* gxp = static_cast<T*>(grad_x);
    cudaError_t err;
    if (training) {
      bwd_local_kernel<T, true><<<blocks, kThreads, 0, stream>>>(t, p, dyp, up, stats, dbuf, partials);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      bwd_bn2_kernel<T><<<blocks, kThreads, 0, stream>>>(t, p, up, stats, dbuf, partials);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      bwd_conv_kernel<T, true><<<blocks, kThreads, taps_bytes, stream>>>(t, p, xp, up, stats, dbuf, partials, gxp);
    } else {
      bwd_local_kernel<T, false><<<blocks, kThreads, 0, stream>>>(t, p, dyp, up, stats, dbuf, partials);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      bwd_conv_kernel<T, false><<<blocks, kThreads, taps_bytes, stream>>>(t, p, xp, up, stats, dbuf, partials, gxp);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    bwd_finish_kernel<<<static_cast<unsigned>(s.C), kThreads, 0, stream>>>(t, partials, g);
    return cudaGetLastError();
  });
}

}  // namespace transxnet_ops
