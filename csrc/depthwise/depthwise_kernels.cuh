// The depthwise kernels: forward, fused backward (grad_x, grad_weight, grad_bias in one pass), and the
// fixed-order reduction of fp32 gradient partials. A block owns `planes` channels of one sample (or of a batch
// chunk, static-weight backward) over one spatial region; it stages the region plus halo in shared memory as fp32
// and dispatches on its segment's kernel size (compile-time 1/3/5/7, run-time otherwise). The element type is a
// run-time switch at the global-memory boundary only, so the unrolled tile code is compiled once, not per dtype.
#pragma once
#include <type_traits>

#include "depthwise/depthwise_stage.cuh"
#include "depthwise/depthwise_tile.cuh"

namespace transxnet_ops {
namespace depthwise {

// Calls fn with a null pointer of the element type of `dtype`.
template <typename Fn>
__device__ __forceinline__ void visit_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32: fn(static_cast<float*>(nullptr)); break;
    case DType::Float16: fn(static_cast<__half*>(nullptr)); break;
    case DType::BFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
  }
}

__device__ __forceinline__ float load_float(const void* p, int64_t i, DType dtype) {
  float v = 0.f;
  visit_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    v = to_float(static_cast<const T*>(p)[i]);
  });
  return v;
}

// What a block does, decoded by thread 0 into shared memory and read from there by every thread: block-uniform
// values then take no registers in the unrolled tile code (nor get spilled across the backward's batch loop).
struct BlockDesc {
  int k, planes, c0;        // kernel size, channels of this block, its first channel
  int h0, w0;               // region origin in the plane
  int64_t b_begin, b_end;   // samples
  int64_t weight_first;     // first tap of the block's weights (of sample b_begin for per-sample weights)
  int64_t bias_first;       // bias index of the first channel (of sample b_begin)
  int64_t partial_row;      // first element of this block's partial-sum row
  SmemLayout layout;
  HaloCopy halo;
};

__device__ inline BlockDesc describe_block(const Args& a, bool backward) {
  int s = 0;
  while (s + 1 < a.num_segments && static_cast<int>(blockIdx.x) >= a.seg[s + 1].block_begin) ++s;
  const SegmentWork& sg = a.seg[s];
  const int spatial_chunks = a.row_chunks * a.col_chunks;
  int local = static_cast<int>(blockIdx.x) - sg.block_begin;
  const int spatial = local % spatial_chunks;
  local /= spatial_chunks;
  const int group = local % sg.groups, batch_block = local / sg.groups;
  const int first = group * sg.planes;
  BlockDesc d;
  d.k = sg.k;
  d.planes = min(sg.planes, sg.channels - first);
  d.c0 = sg.c0 + first;
  d.h0 = (spatial / a.col_chunks) * a.row_tiles * R;
  d.w0 = (spatial % a.col_chunks) * a.col_tiles * V;
  d.b_begin = static_cast<int64_t>(batch_block) * sg.batch_per_block;
  d.b_end = min64(a.B, d.b_begin + sg.batch_per_block);
  d.weight_first = sg.weight_offset + static_cast<int64_t>(first) * sg.k * sg.k + d.b_begin * a.weight_batch_stride;
  d.bias_first = d.b_begin * a.bias_batch_stride + d.c0;
  const int partial_group = (a.weight_batch_stride != 0 ? 0 : batch_block) * spatial_chunks + spatial;
  d.partial_row = static_cast<int64_t>(partial_group) * a.slots;
  d.layout = smem_layout(d.k, d.planes, a.row_tiles, a.col_tiles, blockDim.x, backward);
  d.halo = halo_copy(a.H, a.W, d.h0, d.w0, a.row_tiles * R, d.layout.pitch, d.k, a.stage_vec);
  return d;
}

// Thread -> (plane, tile): tiles of a plane are consecutive threads, column tiles fastest (coalesced stores).
struct ThreadTile {
  int p, r0, c0;
  bool active;
};

__device__ __forceinline__ ThreadTile thread_tile(const Args& a, int planes) {
  const int tiles = a.row_tiles * a.col_tiles;
  const int tid = static_cast<int>(threadIdx.x);
  ThreadTile t;
  t.p = tid / tiles;
  const int tile = tid - t.p * tiles, rt = tile / a.col_tiles;
  t.r0 = rt * R;
  t.c0 = (tile - rt * a.col_tiles) * V;
  t.active = t.p < planes;
  return t;
}

// Copies the block's planes of sample b (rows and columns of its region plus halo) into a zero-filled buffer.
__device__ __forceinline__ void stage_sample(const Args& a, const BlockDesc& d, const void* src, int64_t b,
                                             float* dst) {
  const int64_t HW = static_cast<int64_t>(a.H) * a.W;
  visit_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    stage_halo(static_cast<const T*>(src) + (b * a.C + d.c0) * HW, HW, a.W, d.planes, d.halo, a.stage_vec, dst,
               d.layout.plane_floats, d.layout.pitch);
  });
}

// Stores the R x V outputs of a thread's tile at (h, w) of a plane, clipped to H x W.
template <typename T>
__device__ __forceinline__ void store_tile(T* __restrict__ plane, int H, int W, int h, int w, const float (&acc)[R][V],
                                           bool vec_store) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (h + r >= H) break;
    T* row = plane + static_cast<int64_t>(h + r) * W + w;
    if (vec_store && w + V <= W) {
      Pack<T, V> out;
#pragma unroll
      for (int v = 0; v < V; ++v) out.v[v] = from_float<T>(acc[r][v]);
      *reinterpret_cast<Pack<T, V>*>(row) = out;
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v)
        if (w + v < W) row[v] = from_float<T>(acc[r][v]);
    }
  }
}

// Calls fn(KernelSize<K>{}) with K the compile-time kernel size of the tile code for k (1, 3, 5, 7), or 0 for the
// run-time-k code.
template <int K>
struct KernelSize {
  static constexpr int value = K;
};

template <typename Fn>
__device__ __forceinline__ void dispatch_kernel_size(int k, Fn&& fn) {
  switch (k) {
    case 1: fn(KernelSize<1>{}); break;
    case 3: fn(KernelSize<3>{}); break;
    case 5: fn(KernelSize<5>{}); break;
    case 7: fn(KernelSize<7>{}); break;
    default: fn(KernelSize<0>{}); break;
  }
}

// Convolves a thread's tile from the staged input (`in`: the tile's first input cell) and stores it into plane
// `plane_index` of `out` at (h, w). Only the arithmetic is specialised per kernel size; the store is shared.
__device__ __forceinline__ void conv_store_tile(const Args& a, const float* in, int pitch, const float* w, int k,
                                                float bias, void* out, int64_t plane_index, int h, int col) {
  float acc[R][V];
  dispatch_kernel_size(k, [&](auto kc) {
    constexpr int KC = decltype(kc)::value;
    if constexpr (KC > 0) {
      conv_rows<KC, R>(in, pitch, w, bias, acc);
    } else {
      conv_rows_generic<R>(in, pitch, w, k, bias, acc);
    }
  });
  const int64_t offset = plane_index * a.H * a.W;
  visit_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    store_tile(static_cast<T*>(out) + offset, a.H, a.W, h, col, acc, a.vec_store);
  });
}

__device__ __forceinline__ void stage_block_weights(const Args& a, const BlockDesc& d, const void* weight, bool flip,
                                                    float* s_w) {
  dispatch_kernel_size(d.k, [&](auto kc) {
    visit_dtype(a.dtype, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      stage_weights<decltype(kc)::value>(static_cast<const T*>(weight) + d.weight_first, d.planes, d.k, flip, s_w);
    });
  });
}

// Final gradients of a block's planes: written in the element type, or as fp32 partials when blocks share one.
__device__ __forceinline__ void write_weight_grad(const Args& a, const BlockDesc& d, void* grad_w, float* partial,
                                                  int p, int tap, float v) {
  const int64_t idx = d.weight_first + static_cast<int64_t>(p) * d.k * d.k + tap;
  if (a.partials) {
    partial[d.partial_row + idx] = v;
    return;
  }
  visit_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    static_cast<T*>(grad_w)[idx] = from_float<T>(v);
  });
}

__device__ __forceinline__ void write_bias_grad(const Args& a, const BlockDesc& d, void* grad_b, float* partial, int p,
                                                float v) {
  const int64_t idx = d.bias_first + p;
  if (a.partials) {
    partial[d.partial_row + a.weight_slots + idx] = v;
    return;
  }
  if (grad_b == nullptr) return;
  visit_dtype(a.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    static_cast<T*>(grad_b)[idx] = from_float<T>(v);
  });
}

__device__ void forward_block(const Args& a, const BlockDesc& d, const void* x, const void* weight, const void* bias,
                              void* y, float* smem) {
  float* s_x = smem + d.layout.x_offset;
  float* s_w = smem + d.layout.w_offset;
  zero_fill(s_x, d.planes * d.layout.plane_floats);
  __syncthreads();
  stage_sample(a, d, x, d.b_begin, s_x);
  stage_block_weights(a, d, weight, /*flip=*/false, s_w);
  __syncthreads();

  const ThreadTile t = thread_tile(a, d.planes);
  if (!t.active) return;
  const int k = d.k, pitch = d.layout.pitch;
  const float b = bias != nullptr ? load_float(bias, d.bias_first + t.p, a.dtype) : 0.f;
  conv_store_tile(a, s_x + t.p * d.layout.plane_floats + t.r0 * pitch + t.c0, pitch, s_w + t.p * k * round_up4(k), k,
                  b, y, d.b_begin * a.C + d.c0 + t.p, d.h0 + t.r0, d.w0 + t.c0);
}

// Weight/bias-gradient contributions of one sample, added to the block's accumulators.
__device__ __forceinline__ void accumulate_weight_grad(const Args& a, const BlockDesc& d, const float* s_gy,
                                                       const float* s_x, float* priv, bool first) {
  dispatch_kernel_size(d.k, [&](auto kc) {
    constexpr int KC = decltype(kc)::value;
    if constexpr (KC > 0) {
      const ThreadTile t = thread_tile(a, d.planes);
      if (!t.active) return;
      const int pitch = d.layout.pitch, pad = KC / 2;
      const int tile_offset = t.p * d.layout.plane_floats + t.r0 * pitch + t.c0;
      float gw[KC * KC + 1];  // taps, then the bias
      weight_grad_tile<KC>(s_gy + tile_offset + pad * pitch + pad, s_x + tile_offset, pitch, gw);
      accumulate(priv + threadIdx.x * tile_private_stride(KC), gw, first);
    } else {
      const int rows = min(a.row_tiles * R, a.H - d.h0);
      const int cols = round_up4(min(a.col_tiles * V, a.W - d.w0));
      weight_grad_generic(s_gy, s_x, d.layout.plane_floats, d.layout.pitch, d.k, GenericTasks(d.k, d.planes), rows,
                          cols, reinterpret_cast<float4*>(priv), first);
    }
  });
}

// Sums the accumulators of each plane in a fixed order and writes its gradients.
__device__ void write_block_grads(const Args& a, const BlockDesc& d, const float* priv, void* grad_w, void* grad_b,
                                  float* partial) {
  const int k = d.k;
  if (is_tile_kernel_size(k)) {
    const int kk = k * k, stride = tile_private_stride(k), tiles = a.row_tiles * a.col_tiles;
    for (int task = threadIdx.x; task < d.planes * (kk + 1); task += blockDim.x) {
      const int p = task / (kk + 1), slot = task - p * (kk + 1);
      const float* src = priv + p * tiles * stride + slot;
      float sum = 0.f;
      for (int i = 0; i < tiles; ++i) sum += src[i * stride];
      if (slot < kk) {
        write_weight_grad(a, d, grad_w, partial, p, slot, sum);
      } else {
        write_bias_grad(a, d, grad_b, partial, p, sum);
      }
    }
    return;
  }
  const GenericTasks gt(k, d.planes);
  const float4* p4 = reinterpret_cast<const float4*>(priv);
  for (int task = threadIdx.x; task < gt.tasks; task += blockDim.x) {
    float4 sum = p4[task];
    for (int s = 1; s < gt.slices; ++s) {
      const float4 v = p4[s * gt.tasks + task];
      sum = make_float4(sum.x + v.x, sum.y + v.y, sum.z + v.z, sum.w + v.w);
    }
    const int p = task / gt.per_plane, rem = task - p * gt.per_plane;
    const int i = rem / gt.chunks, j0 = 4 * (rem - i * gt.chunks);
    if (i == k) {
      if (j0 == 0) write_bias_grad(a, d, grad_b, partial, p, sum.x);
      continue;
    }
    const float vals[4] = {sum.x, sum.y, sum.z, sum.w};
    for (int jj = 0; jj < 4 && j0 + jj < k; ++jj) write_weight_grad(a, d, grad_w, partial, p, i * k + j0 + jj, vals[jj]);
  }
}

__device__ void backward_block(const Args& a, const BlockDesc& d, const void* grad_y, const void* x,
                               const void* weight, void* grad_x, void* grad_w, void* grad_b, float* partial,
                               float* smem) {
  float* s_gy = smem + d.layout.gy_offset;
  float* s_x = smem + d.layout.x_offset;
  float* s_w = smem + d.layout.w_offset;
  float* priv = smem + d.layout.private_offset;
  zero_fill(smem, 2 * d.planes * d.layout.plane_floats);
  stage_block_weights(a, d, weight, /*flip=*/true, s_w);

  for (int64_t b = d.b_begin; b < d.b_end; ++b) {
    __syncthreads();  // zero fill done / previous sample fully read
    stage_sample(a, d, grad_y, b, s_gy);
    stage_sample(a, d, x, b, s_x);
    __syncthreads();
    const ThreadTile t = thread_tile(a, d.planes);
    if (t.active) {  // grad_x: grad_y correlated with the rotated filter
      const int k = d.k, pitch = d.layout.pitch;
      conv_store_tile(a, s_gy + t.p * d.layout.plane_floats + t.r0 * pitch + t.c0, pitch,
                      s_w + t.p * k * round_up4(k), k, 0.f, grad_x, b * a.C + d.c0 + t.p, d.h0 + t.r0, d.w0 + t.c0);
    }
    // A scheduling fence: without it the compiler overlaps the two register-heavy phases and spills.
    __syncthreads();
    accumulate_weight_grad(a, d, s_gy, s_x, priv, b == d.b_begin);
  }
  __syncthreads();
  write_block_grads(a, d, priv, grad_w, grad_b, partial);
}

enum class Pass { kForward, kBackward };

// One kernel per pass. Forward: in0 = x, in1 = weight, in2 = bias (or null), out0 = y. Backward: in0 = grad_y,
// in1 = x, in2 = weight, out0 = grad_x, out1 = grad_weight, out2 = grad_bias (or null), partial = fp32 workspace.
template <Pass kPass>
__global__ void __launch_bounds__(kMaxThreads, 2)
    depthwise_kernel(const Args a, const void* __restrict__ in0, const void* __restrict__ in1,
                     const void* __restrict__ in2, void* __restrict__ out0, void* __restrict__ out1,
                     void* __restrict__ out2, float* __restrict__ partial) {
  TXN_DYNAMIC_SMEM(float, smem);
  __shared__ BlockDesc desc[1];
  if (threadIdx.x == 0) desc[0] = describe_block(a, kPass == Pass::kBackward);
  __syncthreads();
  if constexpr (kPass == Pass::kForward) {
    forward_block(a, desc[0], in0, in1, in2, out0, smem);
  } else {
    backward_block(a, desc[0], in0, in1, in2, out0, out1, out2, partial, smem);
  }
}

// Slots of one launch's segments: weight taps [w_begin, w_end) then biases [b_begin, b_end) (partial-row
// indices relative to weight_slots). Each output sums its segment's partial rows in row order.
struct ReduceRange {
  int64_t w_begin, w_end, b_begin, b_end;
};

template <typename T>
__global__ void depthwise_reduce_partials_kernel(const Args a, ReduceRange range, const float* __restrict__ partial,
                                                 T* __restrict__ grad_w, T* __restrict__ grad_b) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n_w = range.w_end - range.w_begin;
  if (n >= n_w + range.b_end - range.b_begin) return;
  const bool is_weight = n < n_w;
  const int64_t slot = is_weight ? range.w_begin + n : range.b_begin + (n - n_w);
  if (!is_weight && grad_b == nullptr) return;
  int s = 0;
  if (is_weight) {
    const int64_t tap = a.weight_batch_stride != 0 ? slot % a.weight_batch_stride : slot;
    while (s + 1 < a.num_segments && tap >= a.seg[s + 1].weight_offset) ++s;
  } else {
    const int64_t c = slot % a.C;
    while (s + 1 < a.num_segments && c >= a.seg[s + 1].c0) ++s;
  }
  const float* src = partial + (is_weight ? slot : a.weight_slots + slot);
  float sum = 0.f;
  for (int g = 0; g < a.seg[s].partial_groups; ++g) sum += src[g * a.slots];
  if (is_weight) {
    grad_w[slot] = from_float<T>(sum);
  } else {
    grad_b[slot] = from_float<T>(sum);
  }
}

}  // namespace depthwise
}  // namespace transxnet_ops
