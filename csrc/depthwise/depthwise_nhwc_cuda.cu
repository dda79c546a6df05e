// Host side of the channels-last (NHWC) depthwise kernels (depthwise_nhwc_kernels.cuh): plans channel groups, row
// bands and (static-weight backward) batch chunks, and launches the kernels on the caller's stream.
#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>

#include "depthwise/depthwise_device.h"
#include "depthwise/depthwise_nhwc_kernels.cuh"
#include "depthwise/depthwise_nhwc_launch.h"

namespace transxnet_ops {
namespace {

using namespace depthwise_nhwc;

// Staged filters per block at most (16 KB: K = 7 takes up to 80 channels, K = 31 four).
constexpr int kMaxFilterFloats = 4096;
constexpr int kMaxGroupVectors = 16;  // channels per block <= 64
// Row bands are sized for about this many (channel vector, row, strip) items per thread...
constexpr int kItemsPerThread = 2;
// ... and split further while the grid has fewer than this many blocks per SM (>= 2 waves of 2 resident blocks).
constexpr int kBlocksPerSm = 4;
// Static-weight gradients: at most this many batch chunks (each a row of fp32 partials per row band).
constexpr int64_t kMaxBatchChunks = 64;

struct Launch {
  Args args;
  int64_t blocks = 0;
  int threads = 0;
  size_t smem = 0;
};

struct Plan {
  bool ok = true;
  size_t smem_optin = 0;
  std::vector<Launch> launches;
  bool partials = false;
  int64_t partial_rows = 0, slots = 0, weight_slots = 0;
};

Plan make_plan(const DepthwiseProblem& pr, bool backward) {
  const depthwise::Device dev = depthwise::current_device();
  Plan plan;
  plan.smem_optin = dev.smem_optin;
  const int64_t B = pr.batch, C = pr.channels;
  const int H = static_cast<int>(pr.height), W = static_cast<int>(pr.width);
  Args base{};
  base.B = B, base.C = C, base.H = H, base.W = W;
  base.strips = static_cast<int>(ceil_div(W, kStrip));

  int64_t taps = 0;
  for (int s = 0; s < pr.num_segments; ++s)
    taps += pr.segments[s].channels * pr.segments[s].kernel_size * pr.segments[s].kernel_size;
  base.weight_batch_stride = pr.per_sample_weights ? taps : 0;
  base.bias_batch_stride = pr.per_sample_weights ? C : 0;
  base.weight_slots = pr.per_sample_weights ? B * taps : taps;
  base.slots = base.weight_slots + (pr.per_sample_weights ? B * C : C);
  plan.slots = base.slots, plan.weight_slots = base.weight_slots;

  // Channel groups: as many channel vectors per block as the filter budget (and, backward, one weight-gradient
  // task per thread for every (vector, filter row, tap chunk)) allows, balanced over the segment.
  std::vector<Segment> segs;
  int64_t c0 = 0, offset = 0;
  for (int s = 0; s < pr.num_segments; ++s) {
    const int64_t channels = pr.segments[s].channels;
    const int k = static_cast<int>(pr.segments[s].kernel_size);
    Segment sg{};
    sg.c0 = static_cast<int>(c0), sg.channels = static_cast<int>(channels), sg.k = k, sg.weight_offset = offset;
    c0 += channels;
    offset += channels * k * k;
    if (channels == 0) continue;
    const int64_t vectors = ceil_div(channels, kVec);
    int cap = std::min(kMaxGroupVectors, std::max(1, kMaxFilterFloats / (k * k * kVec)));
    if (backward) cap = std::min(cap, std::max(1, kThreads / (k * tap_chunks(k))));
    sg.groups = static_cast<int>(ceil_div(vectors, cap));
    sg.group_vectors = static_cast<int>(ceil_div(vectors, sg.groups));
    segs.push_back(sg);
  }
  // Larger kernels first: their (longer) blocks start in the first wave.
  std::stable_sort(segs.begin(), segs.end(), [](const Segment& l, const Segment& r) { return l.k > r.k; });
  int gv_max = 1;
  int64_t groups = 0;
  for (const Segment& sg : segs) gv_max = std::max(gv_max, sg.group_vectors), groups += sg.groups;

  int rows = static_cast<int>(std::clamp<int64_t>(kItemsPerThread * kThreads / (int64_t{gv_max} * base.strips), 1, H));
  int bands = 1;
  auto set_rows = [&](int r) {
    bands = static_cast<int>(ceil_div(H, r));
    rows = static_cast<int>(ceil_div(H, bands));
  };
  set_rows(rows);
  const int64_t target = int64_t{kBlocksPerSm} * dev.sms;
  while (rows > 1 && B * groups * bands < target) set_rows((rows + 1) / 2);
  base.band_rows = rows, base.bands = bands;
  if (int64_t{gv_max} * kVec * rows * base.strips > INT32_MAX) plan.ok = false;  // 32-bit item indices

  base.batch_per_block = 1;
  if (backward && !pr.per_sample_weights) {
    const int64_t chunks = std::min({B, kMaxBatchChunks, std::max<int64_t>(1, ceil_div(target, groups * bands))});
    base.batch_per_block = static_cast<int>(ceil_div(B, chunks));
  }
  const int64_t batch_blocks = ceil_div(B, base.batch_per_block);
  plan.partial_rows = (pr.per_sample_weights ? 1 : batch_blocks) * bands;
  plan.partials = backward && plan.partial_rows > 1;
  base.partials = plan.partials;

  for (size_t first = 0; first < segs.size(); first += kMaxSegments) {
    Launch l;
    l.args = base;
    const size_t count = std::min<size_t>(kMaxSegments, segs.size() - first);
    l.args.num_segments = static_cast<int>(count);
    int64_t work = 1;
    for (size_t i = 0; i < count; ++i) {
      const Segment& sg = segs[first + i];
      work = std::max<int64_t>(work, int64_t{sg.group_vectors} * rows * base.strips);
      if (backward) work = std::max<int64_t>(work, int64_t{sg.group_vectors} * sg.k * tap_chunks(sg.k));
    }
    l.threads = static_cast<int>(std::min<int64_t>(kThreads, (work + 31) / 32 * 32));
    for (size_t i = 0; i < count; ++i) {
      Segment sg = segs[first + i];
      sg.block_begin = static_cast<int>(std::min<int64_t>(l.blocks, INT32_MAX));
      l.blocks += int64_t{sg.groups} * bands * batch_blocks;
      l.args.seg[i] = sg;
      l.smem = std::max(l.smem, sizeof(float) * smem_floats(sg.k, sg.group_vectors, l.threads, backward));
    }
    if (l.blocks > INT32_MAX || l.smem > plan.smem_optin) plan.ok = false;
    plan.launches.push_back(l);
  }
  return plan;
}

// Whether full channel vectors of every (pointer, strides) view are aligned for vector loads and stores.
bool vectorizable(DType dtype, std::initializer_list<std::pair<const void*, NhwcStrides>> views) {
  const int64_t bytes = kVec * (dtype == DType::Float32 ? 4 : 2);
  for (const auto& [ptr, st] : views) {
    if (reinterpret_cast<uintptr_t>(ptr) % bytes != 0) return false;
    if (st.batch % kVec != 0 || st.row % kVec != 0 || st.pixel % kVec != 0) return false;
  }
  return true;
}

void set_vector_access(Args& a, bool vec) {
  for (int s = 0; s < a.num_segments; ++s) a.seg[s].vec = vec && a.seg[s].c0 % kVec == 0;
}

}  // namespace

cudaError_t depthwise_nhwc_forward(DType dtype, const DepthwiseProblem& pr, const void* x, const void* weight,
                                   const void* bias, void* y, cudaStream_t stream) {
  const Plan plan = make_plan(pr, /*backward=*/false);
  if (!plan.ok) return cudaErrorInvalidConfiguration;
  const bool vec = vectorizable(dtype, {{x, pr.layout.x}, {y, pr.layout.out}});
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    static std::atomic<size_t> granted[64];
    for (Launch l : plan.launches) {
      l.args.in0 = pr.layout.x;
      l.args.out = pr.layout.out;
      set_vector_access(l.args, vec);
      cudaError_t err = depthwise::allow_smem(depthwise_nhwc_forward_kernel<T>, l.smem, granted);
      if (err != cudaSuccess) return err;
      depthwise_nhwc_forward_kernel<T><<<static_cast<unsigned>(l.blocks), l.threads, l.smem, stream>>>(
          l.args, static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
          static_cast<T*>(y));
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  });
}

int64_t depthwise_nhwc_backward_workspace(const DepthwiseProblem& pr) {
  const Plan plan = make_plan(pr, /*backward=*/true);
  return plan.partials ? plan.partial_rows * plan.slots : 0;
}

cudaError_t depthwise_nhwc_backward(DType dtype, const DepthwiseProblem& pr, const void* grad_y, const void* x,
                                    const void* weight, void* grad_x, void* grad_weight, void* grad_bias,
                                    float* workspace, cudaStream_t stream) {
  const Plan plan = make_plan(pr, /*backward=*/true);
  if (!plan.ok) return cudaErrorInvalidConfiguration;
  if (plan.partials && workspace == nullptr) return cudaErrorInvalidValue;
  const bool vec = vectorizable(dtype, {{grad_y, pr.layout.grad_y}, {x, pr.layout.x}, {grad_x, pr.layout.out}});
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    static std::atomic<size_t> granted[64];
    for (Launch l : plan.launches) {
      l.args.in0 = pr.layout.grad_y;
      l.args.in1 = pr.layout.x;
      l.args.out = pr.layout.out;
      set_vector_access(l.args, vec);
      cudaError_t err = depthwise::allow_smem(depthwise_nhwc_backward_kernel<T>, l.smem, granted);
      if (err != cudaSuccess) return err;
      depthwise_nhwc_backward_kernel<T><<<static_cast<unsigned>(l.blocks), l.threads, l.smem, stream>>>(
          l.args, static_cast<const T*>(grad_y), static_cast<const T*>(x), static_cast<const T*>(weight),
          static_cast<T*>(grad_x), static_cast<T*>(grad_weight), static_cast<T*>(grad_bias), workspace);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (!plan.partials) return cudaSuccess;
    const int64_t blocks = ceil_div(plan.slots, 256);
    if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
    depthwise_nhwc_reduce_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
        workspace, plan.partial_rows, plan.slots, plan.weight_slots, static_cast<T*>(grad_weight),
        static_cast<T*>(grad_bias));
    return cudaGetLastError();
  });
}

}  // namespace transxnet_ops
