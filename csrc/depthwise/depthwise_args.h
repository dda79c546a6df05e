// Kernel arguments of the depthwise family, filled by the host planner (depthwise_cuda.cu) and read by the
// kernels. Plain data, shared by host and device code (no torch, no CUDA-only syntax).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"

namespace transxnet_ops {
namespace depthwise {

// Each thread owns a kTileRows x kTileCols block of outputs (accumulators in registers). 7 rows divide every
// TransXNet plane (56, 28, 14, 7); 4 columns give 16-byte shared-memory loads of the input window.
constexpr int kTileRows = 7;
constexpr int kTileCols = 4;
constexpr int kMaxThreads = 256;
constexpr int kMaxSegments = 8;

// Channels of one kernel size, cut into groups of `planes` channels; a block owns one group of one sample (or
// batch chunk) and one spatial region.
struct SegmentWork {
  int c0, channels, k;
  int planes;           // channels per block (the last group may have fewer)
  int groups;           // ceil(channels / planes)
  int batch_per_block;  // samples a backward block loops over (static weights); 1 otherwise
  int batch_blocks;     // ceil(B / batch_per_block)
  int block_begin;      // first blockIdx.x of this segment
  int partial_groups;   // rows of fp32 partial sums this segment's gradients are split into
  int64_t weight_offset;  // first tap of channel c0 in the weight (within one sample for per-sample weights)
};

// The kernels compute in fp32 shared memory and registers, so the element type only matters where they read and
// write global memory: it is a run-time field, and one compiled kernel serves float32, float16 and bfloat16.
struct Args {
  DType dtype;  // of every tensor argument
  SegmentWork seg[kMaxSegments];
  int num_segments;
  int64_t B, C;
  int H, W;
  int row_tiles, col_tiles;    // thread tiles of a block region: region = (row_tiles*7) x (col_tiles*4)
  int row_chunks, col_chunks;  // regions per plane (1 x 1 unless the plane is larger than one block)
  int64_t weight_batch_stride;  // per-sample weights: C*k*k; static weights: 0
  int64_t bias_batch_stride;    // per-sample: C; static: 0
  int64_t weight_slots;         // number of weight taps (all samples); bias slots follow in a partial row
  int64_t slots;                // length of a partial row
  int stage_vec;                // elements per global load when staging inputs (1, 2, 4 or 8)
  bool vec_store;               // outputs stored 4 at a time (W % 4 == 0 and aligned)
  bool partials;                // backward: write fp32 partials (reduced by a second kernel), not gradients
};

__host__ __device__ constexpr int round_up4(int v) { return (v + 3) / 4 * 4; }

// Floats of the per-thread gradient accumulators of the register-tile path (K*K taps + bias, 16-byte rows).
__host__ __device__ constexpr int tile_private_stride(int k) { return round_up4(k * k + 1); }

// Shared memory of one block (floats). Halo buffers hold (rows + k - 1) x pitch fp32 per plane with the zero
// padding written in; weights are [planes][k][round_up4(k)] (zero padded). Backward adds the gradient
// accumulators: per tile thread (register-tile path) or per tap task (generic-k path).
struct SmemLayout {
  int pitch, plane_floats;
  int x_offset, gy_offset, w_offset, private_offset;
  int total_floats;
};

__host__ __device__ inline bool is_tile_kernel_size(int k) { return k == 1 || k == 3 || k == 5 || k == 7; }

__host__ __device__ inline SmemLayout smem_layout(int k, int planes, int row_tiles, int col_tiles, int threads,
                                                  bool backward) {
  SmemLayout l;
  const int kp = round_up4(k);
  l.pitch = col_tiles * kTileCols + kp;
  l.plane_floats = (row_tiles * kTileRows + k - 1) * l.pitch;
  const int halos = backward ? 2 : 1;
  l.x_offset = 0;
  l.gy_offset = backward ? planes * l.plane_floats : 0;
  l.w_offset = halos * planes * l.plane_floats;
  const int end = l.w_offset + planes * k * kp;
  if (!backward) {
    l.private_offset = end;
    l.total_floats = end;
  } else if (is_tile_kernel_size(k)) {
    l.private_offset = end;
    l.total_floats = end + planes * row_tiles * col_tiles * tile_private_stride(k);
  } else {
    const int tasks = planes * (k + 1) * (kp / 4);
    l.private_offset = end;
    l.total_floats = end + 4 * (tasks > threads ? tasks : threads);
  }
  return l;
}

}  // namespace depthwise
}  // namespace transxnet_ops
