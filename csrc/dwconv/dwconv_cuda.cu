// Static multi-scale depthwise convolution on CUDA: the depthwise kernel family (csrc/depthwise/) with one
// segment per kernel size and weights shared by the batch.
#include <vector>

#include "depthwise/depthwise_launch.h"
#include "dwconv/dwconv_launch.h"

namespace transxnet_ops {
namespace {

struct DwconvProblem {
  std::vector<DepthwiseSegment> segments;
  DepthwiseProblem problem;
  explicit DwconvProblem(const DwconvShape& s) {
    for (int i = 0; i < s.num_segments; ++i) segments.push_back({s.split_sizes[i], s.kernel_sizes[i]});
    problem = {s.B, s.C, s.H, s.W, segments.data(), s.num_segments, /*per_sample_weights=*/false, s.layout};
  }
};

}  // namespace

cudaError_t dwconv_cuda_forward(DType dtype, const void* x, const void* weight, const void* bias, void* y,
                                const DwconvShape& s, cudaStream_t stream) {
  const DwconvProblem p(s);
  return depthwise_cuda_forward(dtype, p.problem, x, weight, bias, y, stream);
}

int64_t dwconv_cuda_backward_workspace(const DwconvShape& s) {
  const DwconvProblem p(s);
  return depthwise_cuda_backward_workspace(p.problem);
}

cudaError_t dwconv_cuda_backward(DType dtype, const void* grad_y, const void* x, const void* weight, void* grad_x,
                                 void* grad_weight, void* grad_bias, float* workspace, const DwconvShape& s,
                                 cudaStream_t stream) {
  const DwconvProblem p(s);
  return depthwise_cuda_backward(dtype, p.problem, grad_y, x, weight, grad_x, grad_weight, grad_bias, workspace,
                                 stream);
}

}  // namespace transxnet_ops
