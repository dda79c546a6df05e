// Host side of the depthwise kernel family: plans the block decomposition (planes per block, spatial regions,
// batch chunks of the static-weight gradient) and launches the kernels of depthwise_kernels.cuh.
#include <algorithm>
#include <atomic>
#include <vector>

#include "depthwise/depthwise_device.h"
#include "depthwise/depthwise_kernels.cuh"
#include "depthwise/depthwise_launch.h"
#include "depthwise/depthwise_nhwc_launch.h"

namespace transxnet_ops {
namespace {

using namespace depthwise;

// Shared memory per block, at most: forward 64 KB (>= 3 blocks per SM), backward 113 KB (2 blocks per SM on
// sm_90: 228 KB per SM, 1 KB reserved per block); less on devices with less shared memory per SM.
constexpr size_t kForwardSmemBudget = 64 * 1024;
constexpr size_t kBackwardSmemBudget = 113 * 1024;
constexpr size_t kSmemReservedPerBlock = 1024;
// Static-weight gradients: at most this many batch chunks (rows of fp32 partials) per segment.
constexpr int64_t kMaxBatchChunks = 64;

int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

struct Launch {
  Args args;
  ReduceRange range;
  int64_t blocks = 0;
  int threads = 0;
  size_t smem = 0;
};

struct Plan {
  Device device;
  std::vector<Launch> launches;
  bool partials = false;
  int64_t partial_rows = 0, slots = 0;
};

Plan make_plan(const DepthwiseProblem& pr, bool backward) {
  Plan plan;
  plan.device = current_device();
  const Device& dev = plan.device;
  const int64_t B = pr.batch, C = pr.channels;
  const int H = static_cast<int>(pr.height), W = static_cast<int>(pr.width);

  // Block regions: whole planes when a plane's tiles fit one block, else regions of at most 16 x 16 tiles.
  Args base{};
  const int rt_plane = (H + R - 1) / R, ct_plane = (W + V - 1) / V;
  if (static_cast<int64_t>(rt_plane) * ct_plane <= kMaxThreads) {
    base.row_tiles = rt_plane, base.col_tiles = ct_plane, base.row_chunks = 1, base.col_chunks = 1;
  } else {
    base.col_chunks = (ct_plane + 15) / 16;
    base.col_tiles = (ct_plane + base.col_chunks - 1) / base.col_chunks;
    const int max_rows = std::max(1, kMaxThreads / base.col_tiles);
    base.row_chunks = (rt_plane + max_rows - 1) / max_rows;
    base.row_tiles = (rt_plane + base.row_chunks - 1) / base.row_chunks;
  }
  const int tiles = base.row_tiles * base.col_tiles;
  const int spatial = base.row_chunks * base.col_chunks;
  base.B = B, base.C = C, base.H = H, base.W = W;

  int64_t taps = 0;
  for (int s = 0; s < pr.num_segments; ++s) taps += pr.segments[s].channels * pr.segments[s].kernel_size *
                                                    pr.segments[s].kernel_size;
  base.weight_batch_stride = pr.per_sample_weights ? taps : 0;
  base.bias_batch_stride = pr.per_sample_weights ? C : 0;
  base.weight_slots = pr.per_sample_weights ? B * taps : taps;
  base.slots = base.weight_slots + (pr.per_sample_weights ? B * C : C);
  plan.slots = base.slots;

  const size_t budget = std::min({backward ? kBackwardSmemBudget : kForwardSmemBudget, dev.smem_optin,
                                  dev.smem_per_sm / (backward ? 2 : 3) - kSmemReservedPerBlock});
  const int lane_unit = 32 / gcd(tiles, 32);  // planes per block that fill whole warps

  std::vector<SegmentWork> work;
  int64_t c0 = 0, offset = 0;
  for (int s = 0; s < pr.num_segments; ++s) {
    const int64_t channels = pr.segments[s].channels;
    const int k = static_cast<int>(pr.segments[s].kernel_size);
    SegmentWork sw{};
    sw.c0 = static_cast<int>(c0), sw.channels = static_cast<int>(channels), sw.k = k, sw.weight_offset = offset;
    c0 += channels;
    offset += channels * k * k;
    if (channels == 0) continue;
    auto smem_bytes = [&](int planes, int threads) {
      return sizeof(float) *
             static_cast<size_t>(smem_layout(k, planes, base.row_tiles, base.col_tiles, threads, backward).total_floats);
    };
    int planes = static_cast<int>(std::min<int64_t>(channels, std::max(1, kMaxThreads / tiles)));
    while (planes > 1 && smem_bytes(planes, kMaxThreads) > budget) --planes;
    if (planes >= lane_unit && planes < channels) planes = planes / lane_unit * lane_unit;
    sw.planes = planes;
    sw.groups = static_cast<int>((channels + planes - 1) / planes);

    sw.batch_per_block = 1;
    if (backward && !pr.per_sample_weights) {
      // Enough batch chunks that the blocks fill ~2 waves; fewer chunks mean fewer partial rows to reduce.
      const int threads = (planes * tiles + 31) / 32 * 32;
      const size_t smem = smem_bytes(planes, threads) + kSmemReservedPerBlock;
      const int64_t resident = std::max<int64_t>(
          1, std::min<int64_t>({2048 / threads, 65536 / (128 * threads), static_cast<int64_t>(dev.smem_per_sm / smem)}));
      const int64_t per_sample = static_cast<int64_t>(sw.groups) * spatial;
      const int64_t want =
          std::min({B, kMaxBatchChunks, (2 * dev.sms * resident + per_sample - 1) / per_sample});
      sw.batch_per_block = static_cast<int>((B + want - 1) / want);
    }
    sw.batch_blocks = static_cast<int>((B + sw.batch_per_block - 1) / sw.batch_per_block);
    sw.partial_groups = (pr.per_sample_weights ? 1 : sw.batch_blocks) * spatial;
    plan.partial_rows = std::max<int64_t>(plan.partial_rows, sw.partial_groups);
    work.push_back(sw);
  }
  plan.partials = backward && plan.partial_rows > 1;
  base.partials = plan.partials;

  // Launches of up to kMaxSegments segments each.
  for (size_t first = 0; first < work.size(); first += kMaxSegments) {
    Launch l;
    l.args = base;
    const size_t count = std::min<size_t>(kMaxSegments, work.size() - first);
    l.args.num_segments = static_cast<int>(count);
    int max_planes = 1;
    for (size_t i = 0; i < count; ++i) max_planes = std::max(max_planes, work[first + i].planes);
    l.threads = (max_planes * tiles + 31) / 32 * 32;
    int64_t blocks = 0;
    for (size_t i = 0; i < count; ++i) {
      SegmentWork sw = work[first + i];
      sw.block_begin = static_cast<int>(blocks);
      blocks += static_cast<int64_t>(sw.groups) * spatial * sw.batch_blocks;
      l.args.seg[i] = sw;
      const SmemLayout sl = smem_layout(sw.k, sw.planes, base.row_tiles, base.col_tiles, l.threads, backward);
      l.smem = std::max(l.smem, sizeof(float) * static_cast<size_t>(sl.total_floats));
    }
    l.blocks = blocks;
    const SegmentWork& lo = l.args.seg[0];
    const SegmentWork& hi = l.args.seg[count - 1];
    if (pr.per_sample_weights) {
      l.range = {0, base.weight_slots, 0, B * C};
    } else {
      l.range = {lo.weight_offset, hi.weight_offset + static_cast<int64_t>(hi.channels) * hi.k * hi.k, lo.c0,
                 static_cast<int64_t>(hi.c0) + hi.channels};
    }
    plan.launches.push_back(l);
  }
  return plan;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Widest staging load (elements) that every row of every staged tensor allows.
int stage_vec(int W, size_t elem, std::initializer_list<const void*> ptrs) {
  for (int vec = static_cast<int>(16 / elem); vec > 1; vec /= 2) {
    bool ok = W % vec == 0;
    for (const void* p : ptrs) ok = ok && aligned(p, vec * elem);
    if (ok) return vec;
  }
  return 1;
}

bool vec_store(int W, size_t elem, std::initializer_list<const void*> ptrs) {
  bool ok = W % V == 0;
  for (const void* p : ptrs) ok = ok && aligned(p, V * elem);
  return ok;
}

bool valid(const DepthwiseProblem& pr) {
  if (pr.num_segments <= 0 || pr.batch < 0 || pr.channels < 0 || pr.height < 0 || pr.width < 0) return false;
  if (pr.height > INT32_MAX / 2 || pr.width > INT32_MAX / 2 || pr.channels > INT32_MAX) return false;
  if (pr.per_sample_weights && pr.num_segments != 1) return false;
  int64_t channels = 0;
  for (int s = 0; s < pr.num_segments; ++s) {
    const int64_t k = pr.segments[s].kernel_size;
    if (pr.segments[s].channels < 0 || k < 1 || k % 2 == 0 || k > kDepthwiseMaxKernelSize) return false;
    channels += pr.segments[s].channels;
  }
  return channels == pr.channels;
}

size_t element_size(DType dtype) { return dtype == DType::Float32 ? 4 : 2; }

cudaError_t check_launch(const Plan& plan, const Launch& l) {
  if (l.blocks > INT32_MAX || l.smem > plan.device.smem_optin) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

bool empty(const DepthwiseProblem& pr) { return pr.batch == 0 || pr.channels == 0 || pr.height == 0 || pr.width == 0; }

}  // namespace

cudaError_t depthwise_cuda_forward(DType dtype, const DepthwiseProblem& pr, const void* x, const void* weight,
                                   const void* bias, void* y, cudaStream_t stream) {
  if (!valid(pr)) return cudaErrorInvalidValue;
  if (empty(pr)) return cudaSuccess;
  if (pr.layout.channels_last) return depthwise_nhwc_forward(dtype, pr, x, weight, bias, y, stream);
  const Plan plan = make_plan(pr, /*backward=*/false);
  const size_t elem = element_size(dtype);
  const int vec = stage_vec(pr.width, elem, {x});
  const bool vstore = vec_store(pr.width, elem, {y});
  static std::atomic<size_t> granted[64];
  for (Launch l : plan.launches) {
    cudaError_t err = check_launch(plan, l);
    if (err == cudaSuccess) err = allow_smem(depthwise_kernel<Pass::kForward>, l.smem, granted);
    if (err != cudaSuccess) return err;
    l.args.dtype = dtype;
    l.args.stage_vec = vec;
    l.args.vec_store = vstore;
    depthwise_kernel<Pass::kForward><<<static_cast<unsigned>(l.blocks), l.threads, l.smem, stream>>>(
        l.args, x, weight, bias, y, nullptr, nullptr, nullptr);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

int64_t depthwise_cuda_backward_workspace(const DepthwiseProblem& pr) {
  if (!valid(pr) || empty(pr)) return 0;
  if (pr.layout.channels_last) return depthwise_nhwc_backward_workspace(pr);
  const Plan plan = make_plan(pr, /*backward=*/true);
  return plan.partials ? plan.partial_rows * plan.slots : 0;
}

cudaError_t depthwise_cuda_backward(DType dtype, const DepthwiseProblem& pr, const void* grad_y, const void* x,
                                    const void* weight, void* grad_x, void* grad_weight, void* grad_bias,
                                    float* workspace, cudaStream_t stream) {
  if (!valid(pr)) return cudaErrorInvalidValue;
  if (empty(pr)) return cudaSuccess;  // the binding zero-fills gradients of empty problems
  if (pr.layout.channels_last)
    return depthwise_nhwc_backward(dtype, pr, grad_y, x, weight, grad_x, grad_weight, grad_bias, workspace, stream);
  const Plan plan = make_plan(pr, /*backward=*/true);
  if (plan.partials && workspace == nullptr) return cudaErrorInvalidValue;
  const size_t elem = element_size(dtype);
  const int vec = stage_vec(pr.width, elem, {grad_y, x});
  const bool vstore = vec_store(pr.width, elem, {grad_x});
  static std::atomic<size_t> granted[64];
  for (Launch l : plan.launches) {
    cudaError_t err = check_launch(plan, l);
    if (err == cudaSuccess) err = allow_smem(depthwise_kernel<Pass::kBackward>, l.smem, granted);
    if (err != cudaSuccess) return err;
    l.args.dtype = dtype;
    l.args.stage_vec = vec;
    l.args.vec_store = vstore;
    depthwise_kernel<Pass::kBackward><<<static_cast<unsigned>(l.blocks), l.threads, l.smem, stream>>>(
        l.args, grad_y, x, weight, grad_x, grad_weight, grad_bias, workspace);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (!plan.partials) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    for (const Launch& l : plan.launches) {
      const int64_t outputs = l.range.w_end - l.range.w_begin + l.range.b_end - l.range.b_begin;
      const int64_t blocks = (outputs + 255) / 256;
      if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
      depthwise_reduce_partials_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          l.args, l.range, workspace, static_cast<T*>(grad_weight), static_cast<T*>(grad_bias));
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

}  // namespace transxnet_ops
