// IDConv CUDA entry points: allocation, device guard, torch's current stream; kernels in csrc/depthwise/.
#include "cuda_binding.h"
#include "depthwise/depthwise_bind.h"
#include "depthwise/depthwise_launch.h"
#include "idconv/idconv.h"
#include "idconv/idconv_launch.h"

namespace transxnet_ops {

namespace {
IdconvShape shape_of(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(weight.size(2) <= kDepthwiseMaxKernelSize, "idconv: the CUDA kernels support K <= ",
              kDepthwiseMaxKernelSize, ", got K=", weight.size(2));
  return {x.size(0), x.size(1), x.size(2), x.size(3), weight.size(2)};
}
}  // namespace

at::Tensor idconv_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  IdconvShape s = shape_of(x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = empty_activation(x);
  s.layout = depthwise_layout(x, y);
  check_launch(idconv_cuda_forward(cuda_dtype(x, "idconv"), x.data_ptr(), weight.data_ptr(),
                                   bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), s,
                                   at::cuda::getCurrentCUDAStream()),
               "idconv");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  IdconvShape s = shape_of(x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const DType dtype = cuda_dtype(x, "idconv_backward");
  auto grad_x = empty_activation(x);
  s.layout = depthwise_layout(x, grad_x, &grad_y);
  if (x.numel() == 0) {  // sums over empty planes
    return {grad_x, at::zeros_like(weight, at::MemoryFormat::Contiguous), at::zeros({s.B, s.C}, x.options())};
  }
  auto grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  auto grad_b = at::empty({s.B, s.C}, x.options());
  auto workspace = at::empty({idconv_cuda_backward_workspace(s)}, x.options().dtype(at::kFloat));
  check_launch(idconv_cuda_backward(dtype, grad_y.data_ptr(), x.data_ptr(), weight.data_ptr(), grad_x.data_ptr(),
                                    grad_w.data_ptr(), grad_b.data_ptr(), workspace.data_ptr<float>(), s,
                                    at::cuda::getCurrentCUDAStream()),
               "idconv_backward");
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
