// Kernel arguments of the channels-last (NHWC) depthwise kernels, filled by the host planner
// (depthwise_nhwc_cuda.cu) and read by the kernels (depthwise_nhwc_kernels.cuh). Plain data.
#pragma once
#include <cstdint>

#include "depthwise/depthwise_layout.h"

namespace transxnet_ops {
namespace depthwise_nhwc {

// A thread item is kVec consecutive channels of kStrip consecutive output pixels of one row: each input vector it
// loads serves up to K taps of the strip. 7 columns divide every TransXNet width (56, 28, 14, 7); 4 channels keep
// a K = 7 filter row and the strip's accumulators at 28 registers each (one 16-byte fp32 load, 8-byte for
// 16-bit types; a warp still reads whole 32-byte sectors along the channels).
constexpr int kStrip = 7;
constexpr int kVec = 4;
// Weight-gradient strips: a strip's output gradients stay in registers while its input row streams by; fp32
// takes 4 columns (7 would spill a few registers).
template <typename T>
constexpr int kGradStrip = sizeof(T) == 2 ? 7 : 4;
// Kernel sizes compiled with their taps unrolled; any other odd k (and channel vectors that are partial or not
// aligned) takes the run-time-k code, which walks each filter row in chunks of kTapChunk taps.
constexpr int kTapChunk = 8;
constexpr int kGenericGradTaps = 4;  // the run-time-k weight gradient walks a task's chunk 4 taps at a time
constexpr int kThreads = 256;
constexpr int kMaxSegments = 8;
// Floats a weight-gradient task leaves in shared memory for the block reduction: kTapChunk taps x kVec channels,
// then kVec bias sums.
constexpr int kTaskFloats = kTapChunk * kVec + kVec;

// Channels [c0, c0 + channels) of kernel size k, cut into `groups` blocks of `group_vectors` channel vectors.
struct Segment {
  int c0, channels, k;
  int group_vectors, groups;
  int block_begin;        // first blockIdx.x of this segment
  bool vec;               // vector loads/stores are aligned for this segment's full channel vectors
  int64_t weight_offset;  // first tap of channel c0 (within one sample for per-sample weights)
};

// Blocks: (segment, batch chunk, channel group, row band). Forward and grad_x items: (channel vector, row, strip)
// of the block's band; weight-gradient tasks: (channel vector, filter row, tap chunk, slice of the band's strips).
struct Args {
  Segment seg[kMaxSegments];
  int num_segments;
  int64_t B, C;
  int H, W;
  int strips;                   // ceil(W / kStrip)
  int band_rows, bands;         // rows per block, row bands per plane
  int batch_per_block;          // samples a backward block loops over (static weights); 1 otherwise
  NhwcStrides in0, in1, out;    // forward: x, -, y; backward: grad_y, x, grad_x
  int64_t weight_batch_stride;  // per-sample weights: C*k*k; static weights: 0
  int64_t bias_batch_stride;    // per-sample: C; static: 0
  int64_t weight_slots;         // weight taps (all samples); bias slots follow in a partial row
  int64_t slots;                // length of a partial row
  bool partials;                // backward: write fp32 partial rows (reduced by a second kernel), not gradients
};

__host__ __device__ inline int tap_chunks(int k) { return (k + kTapChunk - 1) / kTapChunk; }
__host__ __device__ inline int weight_pitch(int group_vectors) { return group_vectors * kVec; }
// Shared memory (floats): the block's filters as [k*k][pitch] (taps major, channels contiguous), then (backward)
// kTaskFloats per thread for the weight-gradient reduction.
__host__ __device__ inline int weight_smem_floats(int k, int group_vectors) {
  return k * k * weight_pitch(group_vectors);
}
__host__ __device__ inline int smem_floats(int k, int group_vectors, int threads, bool backward) {
  return weight_smem_floats(k, group_vectors) + (backward ? threads * kTaskFloats : 0);
}

}  // namespace depthwise_nhwc
}  // namespace transxnet_ops
