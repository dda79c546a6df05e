// The channels-last (NHWC) depthwise kernels: forward, fused backward (grad_x, grad_weight, grad_bias in one
// kernel) and the fixed-order reduction of fp32 gradient partials. A block owns a channel group of one segment over
// a band of rows of one sample (or of a batch chunk: static-weight backward); its filters sit in shared memory as
// fp32 [k*k][channels] so a thread reads its channels' tap as one 16-byte load. Threads take (channel vector, row,
// strip) items with the channel vector fastest, so a warp's global accesses run along the pixels' channels.
//
// Backward, per sample: grad_x is the forward with the filters rotated by 180 degrees, run over grad_y; then each
// thread that owns a weight-gradient task - (channel vector, filter row, tap chunk, slice of the band's strips) -
// adds its strips' contributions to register accumulators that persist across the batch chunk. The block sums the
// tasks' accumulators over slices in a fixed order and writes its gradients, or an fp32 partial row when the
// gradient also spans other blocks (row bands, batch chunks); depthwise_nhwc_reduce_kernel sums the rows in order.
#pragma once
#include "depthwise/depthwise_nhwc_strip.cuh"

namespace transxnet_ops {
namespace depthwise_nhwc {

// What a block does (decoded from blockIdx.x by thread 0 into shared memory).
struct Block {
  int k, kk;
  int c_first;            // first channel (in C) of the block
  int channels, vectors;  // channels of the block, channel vectors (the last may be partial)
  int pitch;              // floats per tap row of the staged filters (vectors * kVec)
  int h0, rows;           // row band
  int64_t b_begin, b_end;
  int64_t weight_first;   // weight index of tap 0 of the block's first channel (of sample b_begin)
  int64_t bias_first;     // bias index of the block's first channel (of sample b_begin)
  int64_t partial_row;    // first element of the block's fp32 partial row
  bool vec;               // full channel vectors may use vector loads/stores
};

__device__ __forceinline__ Block describe_block(const Args& a) {
  int s = 0;
  while (s + 1 < a.num_segments && static_cast<int>(blockIdx.x) >= a.seg[s + 1].block_begin) ++s;
  const Segment& sg = a.seg[s];
  int local = static_cast<int>(blockIdx.x) - sg.block_begin;
  const int band = local % a.bands;
  local /= a.bands;
  const int group = local % sg.groups, batch_block = local / sg.groups;
  const int c_seg = group * sg.group_vectors * kVec;  // first channel of the block within the segment
  Block d;
  d.k = sg.k;
  d.kk = sg.k * sg.k;
  d.c_first = sg.c0 + c_seg;
  d.channels = min(sg.group_vectors * kVec, sg.channels - c_seg);
  d.vectors = (d.channels + kVec - 1) / kVec;
  d.pitch = d.vectors * kVec;
  d.h0 = band * a.band_rows;
  d.rows = min(a.band_rows, a.H - d.h0);
  d.b_begin = static_cast<int64_t>(batch_block) * a.batch_per_block;
  d.b_end = min64(a.B, d.b_begin + a.batch_per_block);
  d.weight_first = sg.weight_offset + static_cast<int64_t>(c_seg) * d.kk + d.b_begin * a.weight_batch_stride;
  d.bias_first = d.b_begin * a.bias_batch_stride + d.c_first;
  const int64_t batch_row = a.weight_batch_stride != 0 ? 0 : batch_block;  // per-sample slots differ already
  d.partial_row = (batch_row * a.bands + band) * a.slots;
  d.vec = sg.vec;
  return d;
}

// The block's filters, transposed into s_f[tap][channel] (fp32; padding channels up to the pitch are zero);
// `flip` rotates each filter by 180 degrees (grad_x correlates grad_y with the rotated filter).
template <typename T>
__device__ void stage_filters(const T* __restrict__ w, const Block& d, bool flip, float* s_f) {
  const int kk = d.kk;
  for (int e = threadIdx.x; e < d.channels * kk; e += blockDim.x) {
    const int c = e / kk, tap = e - c * kk;
    s_f[(flip ? kk - 1 - tap : tap) * d.pitch + c] = to_float(w[e]);
  }
  const int pad = d.pitch - d.channels;
  for (int e = threadIdx.x; e < pad * kk; e += blockDim.x) s_f[(e / pad) * d.pitch + d.channels + e % pad] = 0.f;
}

// Calls fn(KernelSize<K>{}) when k has unrolled code (1, 3, 5, 7); returns whether it did.
template <int K>
struct KernelSize {
  static constexpr int value = K;
};

template <typename Fn>
__device__ __forceinline__ bool dispatch_unrolled(int k, Fn&& fn) {
  switch (k) {
    case 1: fn(KernelSize<1>{}); return true;
    case 3: fn(KernelSize<3>{}); return true;
    case 5: fn(KernelSize<5>{}); return true;
    case 7: fn(KernelSize<7>{}); return true;
    default: return false;
  }
}

// out = bias + in (*) filters over the block's band of sample b, one (channel vector, row, strip) item at a time.
// `bias` points at the block's first channel (null: none).
template <typename T>
__device__ __forceinline__ void conv_band(const Args& a, const Block& d, const T* __restrict__ in,
                                          const NhwcStrides& si, T* __restrict__ out, const NhwcStrides& so,
                                          const float* __restrict__ s_f, const T* __restrict__ bias, int64_t b) {
  const int items = d.vectors * d.rows * a.strips;
  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    const int cv = item % d.vectors, rest = item / d.vectors;
    const int h = d.h0 + rest / a.strips, w0 = (rest % a.strips) * kStrip;
    const int c = cv * kVec, n = min(kVec, d.channels - c);
    float b0[kVec] = {0.f, 0.f, 0.f, 0.f};
    if (bias != nullptr) load_part(bias + c, n, /*vec=*/false, b0);
    float acc[kStrip][kVec];
#pragma unroll
    for (int s = 0; s < kStrip; ++s)
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[s][e] = b0[e];
    const T* src = in + b * si.batch + d.c_first + c;
    const float* f = s_f + c;
    const bool unrolled = d.vec && n == kVec && dispatch_unrolled(d.k, [&](auto kc) {
      conv_strip<decltype(kc)::value>(src, si, a.H, a.W, h, w0, f, d.pitch, acc);
    });
    if (!unrolled) conv_strip_generic(src, si, a.H, a.W, h, w0, f, d.pitch, d.k, n, d.vec, acc);
    T* dst = out + b * so.batch + h * so.row + d.c_first + c;
#pragma unroll
    for (int s = 0; s < kStrip; ++s)
      if (w0 + s < a.W) store_part(dst + (w0 + s) * so.pixel, n, d.vec, acc[s]);
  }
}

// A thread's weight-gradient task (fixed for the whole batch chunk): channel vector cv, filter row i, taps
// [chunk * kTapChunk, +kTapChunk) of it, and every slices-th strip of the band starting at `slice`. Tasks are
// numbered chunk fastest, then i, cv, slice: the block reduction finds a task's accumulators by that number.
struct GradTask {
  int cv, i, chunk, slice, slices;
  bool active;
};

__device__ __forceinline__ int task_slices(const Block& d) {
  return max(1, static_cast<int>(blockDim.x) / (d.vectors * d.k * tap_chunks(d.k)));
}

__device__ __forceinline__ GradTask grad_task(const Block& d) {
  const int chunks = tap_chunks(d.k);
  GradTask t;
  t.slices = task_slices(d);
  int task = threadIdx.x;
  t.active = task < t.slices * d.vectors * d.k * chunks;
  t.chunk = task % chunks;
  task /= chunks;
  t.i = task % d.k;
  task /= d.k;
  t.cv = task % d.vectors;
  t.slice = task / d.vectors;
  return t;
}

// Adds sample b's contributions of a task's strips to its accumulators `acc` (shared memory, kTaskFloats: the
// taps of the task's chunk, then the bias gradient, which only tasks of filter row 0, chunk 0 sum); the first
// sample of the chunk starts them from zero. Kept in shared memory between samples, they take no registers while
// the block computes grad_x. KC: the unrolled kernel size (full, aligned channel vectors; all K taps at once), or
// 0: run-time k, the chunk's taps kGenericGradTaps at a time (one pass over the strips each).
template <int KC, typename T>
__device__ __forceinline__ void accumulate_task(const Args& a, const Block& d, const GradTask& t, const T* gy_b,
                                                const T* x_b, int n, bool first, float* __restrict__ acc) {
  constexpr int JC = KC > 0 ? KC : kGenericGradTaps;  // taps per pass
  const int strips = (a.W + kGradStrip<T> - 1) / kGradStrip<T>, units = d.rows * strips;
  const int j_end = KC > 0 ? KC : min(d.k - t.chunk * kTapChunk, kTapChunk);
  for (int jc = 0; jc < j_end; jc += JC) {
    const bool with_bias = jc == 0 && t.i == 0 && t.chunk == 0;
    float gw[JC][kVec], gb[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      gb[e] = first ? 0.f : acc[kTapChunk * kVec + e];
#pragma unroll
      for (int j = 0; j < JC; ++j) gw[j][e] = first ? 0.f : acc[(jc + j) * kVec + e];
    }
    for (int unit = t.slice; unit < units; unit += t.slices) {
      const int h = d.h0 + unit / strips, w0 = (unit % strips) * kGradStrip<T>;
      float g[kGradStrip<T>][kVec];
      load_strip(gy_b + h * a.in0.row, a.in0.pixel, a.W, w0, n, d.vec, g);
      if (with_bias) {
#pragma unroll
        for (int s = 0; s < kGradStrip<T>; ++s)
#pragma unroll
          for (int e = 0; e < kVec; ++e) gb[e] += g[s][e];
      }
      if constexpr (KC > 0) {
        weight_grad_row<KC>(g, x_b, a.in1, a.H, a.W, h, w0, t.i, gw);
      } else {
        weight_grad_row_generic(g, x_b, a.in1, a.H, a.W, h, w0, t.i, t.chunk * kTapChunk + jc, d.k, n, d.vec, gw);
      }
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      if (with_bias) acc[kTapChunk * kVec + e] = gb[e];
#pragma unroll
      for (int j = 0; j < JC; ++j)
        if (jc + j < kTapChunk) acc[(jc + j) * kVec + e] = gw[j][e];
    }
  }
}

template <typename T>
__device__ __forceinline__ void accumulate_weight_grad(const Args& a, const Block& d, const GradTask& t,
                                                       const T* __restrict__ gy, const T* __restrict__ x, int64_t b,
                                                       float* __restrict__ acc) {
  if (!t.active) return;
  const int c = t.cv * kVec, n = min(kVec, d.channels - c);
  const T* gy_b = gy + b * a.in0.batch + d.c_first + c;
  const T* x_b = x + b * a.in1.batch + d.c_first + c;
  const bool first = b == d.b_begin;
  const bool unrolled = d.vec && n == kVec && dispatch_unrolled(d.k, [&](auto kc) {
    accumulate_task<decltype(kc)::value>(a, d, t, gy_b, x_b, n, first, acc);
  });
  if (!unrolled) accumulate_task<0>(a, d, t, gy_b, x_b, n, first, acc);
}

// Sums each (channel, tap) and each channel's bias over the task slices, in slice order, from the accumulators the
// tasks left in `red`, and writes them: gradients in the element type, or the block's fp32 partial row.
template <typename T>
__device__ void write_block_grads(const Args& a, const Block& d, const float* red, T* __restrict__ grad_w,
                                  T* __restrict__ grad_b, float* __restrict__ partial) {
  const int kk = d.kk, chunks = tap_chunks(d.k), slices = task_slices(d);
  const int slice_stride = d.vectors * d.k * chunks * kTaskFloats;
  for (int o = threadIdx.x; o < d.channels * (kk + 1); o += blockDim.x) {
    const bool is_bias = o >= d.channels * kk;
    const int c = is_bias ? o - d.channels * kk : o / kk;
    const int tap = is_bias ? 0 : o - c * kk;
    const int i = tap / d.k, j = tap - i * d.k;
    const int offset = is_bias ? kTapChunk * kVec + c % kVec : (j % kTapChunk) * kVec + c % kVec;
    const float* src = red + (((c / kVec) * d.k + i) * chunks + j / kTapChunk) * kTaskFloats + offset;
    float sum = 0.f;
    for (int p = 0; p < slices; ++p) sum += src[p * slice_stride];
    if (is_bias) {
      const int64_t idx = d.bias_first + c;
      if (a.partials) {
        partial[d.partial_row + a.weight_slots + idx] = sum;
      } else if (grad_b != nullptr) {
        grad_b[idx] = from_float<T>(sum);
      }
    } else {
      const int64_t idx = d.weight_first + static_cast<int64_t>(c) * kk + tap;
      if (a.partials) {
        partial[d.partial_row + idx] = sum;
      } else {
        grad_w[idx] = from_float<T>(sum);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    depthwise_nhwc_forward_kernel(const Args a, const T* __restrict__ x, const T* __restrict__ weight,
                                  const T* __restrict__ bias, T* __restrict__ y) {
  TXN_DYNAMIC_SMEM(float, s_f);
  __shared__ Block desc[1];  // block-uniform values in shared memory take no registers in the unrolled strips
  if (threadIdx.x == 0) desc[0] = describe_block(a);
  __syncthreads();
  const Block& d = desc[0];
  stage_filters(weight + d.weight_first, d, /*flip=*/false, s_f);
  __syncthreads();
  conv_band(a, d, x, a.in0, y, a.out, s_f, bias != nullptr ? bias + d.bias_first : nullptr, d.b_begin);
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    depthwise_nhwc_backward_kernel(const Args a, const T* __restrict__ grad_y, const T* __restrict__ x,
                                   const T* __restrict__ weight, T* __restrict__ grad_x, T* __restrict__ grad_w,
                                   T* __restrict__ grad_b, float* __restrict__ partial) {
  TXN_DYNAMIC_SMEM(float, smem);
  __shared__ Block desc[1];  // block-uniform values in shared memory take no registers in the unrolled strips
  if (threadIdx.x == 0) desc[0] = describe_block(a);
  __syncthreads();
  const Block& d = desc[0];
  float* s_f = smem;
  float* red = smem + weight_smem_floats(d.k, d.vectors);
  stage_filters(weight + d.weight_first, d, /*flip=*/true, s_f);
  __syncthreads();
  const GradTask t = grad_task(d);
  for (int64_t b = d.b_begin; b < d.b_end; ++b) {
    conv_band(a, d, grad_y, a.in0, grad_x, a.out, s_f, static_cast<const T*>(nullptr), b);
    // A scheduling fence: without it the compiler overlaps the two register-heavy phases and spills.
    __syncthreads();
    accumulate_weight_grad(a, d, t, grad_y, x, b, red + threadIdx.x * kTaskFloats);
  }
  __syncthreads();
  write_block_grads(a, d, red, grad_w, grad_b, partial);
}

// grad_weight / grad_bias slot n = the sum of rows [0, rows) of the fp32 partials, in row order.
template <typename T>
__global__ void depthwise_nhwc_reduce_kernel(const float* __restrict__ partial, int64_t rows, int64_t slots,
                                             int64_t weight_slots, T* __restrict__ grad_w, T* __restrict__ grad_b) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= slots || (n >= weight_slots && grad_b == nullptr)) return;
  float sum = 0.f;
  for (int64_t r = 0; r < rows; ++r) sum += partial[r * slots + n];
  if (n < weight_slots) {
    grad_w[n] = from_float<T>(sum);
  } else {
    grad_b[n - weight_slots] = from_float<T>(sum);
  }
}

}  // namespace depthwise_nhwc
}  // namespace transxnet_ops
