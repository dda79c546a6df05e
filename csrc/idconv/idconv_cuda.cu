// IDConv on CUDA: the depthwise kernel family (csrc/depthwise/) with one segment of per-sample weights.
#include "depthwise/depthwise_launch.h"
#include "idconv/idconv_launch.h"

namespace transxnet_ops {
namespace {

struct IdconvProblem {
  DepthwiseSegment segment;
  DepthwiseProblem problem;
  explicit IdconvProblem(const IdconvShape& s) : segment{s.C, s.K} {
    problem = {s.B, s.C, s.H, s.W, &segment, 1, /*per_sample_weights=*/true, s.layout};
  }
};

}  // namespace

cudaError_t idconv_cuda_forward(DType dtype, const void* x, const void* w, const void* bias, void* y,
                                const IdconvShape& s, cudaStream_t stream) {
  const IdconvProblem p(s);
  return depthwise_cuda_forward(dtype, p.problem, x, w, bias, y, stream);
}

int64_t idconv_cuda_backward_workspace(const IdconvShape& s) {
  const IdconvProblem p(s);
  return depthwise_cuda_backward_workspace(p.problem);
}

cudaError_t idconv_cuda_backward(DType dtype, const void* grad_y, const void* x, const void* w, void* grad_x,
                                 void* grad_w, void* grad_b, float* workspace, const IdconvShape& s,
                                 cudaStream_t stream) {
  const IdconvProblem p(s);
  return depthwise_cuda_backward(dtype, p.problem, grad_y, x, w, grad_x, grad_w, grad_b, workspace, stream);
}

}  // namespace transxnet_ops
