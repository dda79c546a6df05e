// dwconv2d CUDA entry points: allocation, device guard, torch's current stream; kernels in csrc/depthwise/.
#include "cuda_binding.h"
#include "depthwise/depthwise_bind.h"
#include "depthwise/depthwise_launch.h"
#include "dwconv/dwconv.h"
#include "dwconv/dwconv_launch.h"

namespace transxnet_ops {

namespace {
DwconvShape shape_of(const at::Tensor& x, at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  for (const int64_t k : kernel_sizes)
    TORCH_CHECK(k <= kDepthwiseMaxKernelSize, "dwconv2d: the CUDA kernels support kernel sizes <= ",
                kDepthwiseMaxKernelSize, ", got ", kernel_sizes);
  return {x.size(0), x.size(1), x.size(2), x.size(3), split_sizes.data(), kernel_sizes.data(),
          static_cast<int>(split_sizes.size())};
}
}  // namespace

at::Tensor dwconv2d_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  DwconvShape s = shape_of(x, split_sizes, kernel_sizes);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = empty_activation(x);
  s.layout = depthwise_layout(x, y);
  check_launch(dwconv_cuda_forward(cuda_dtype(x, "dwconv2d"), x.data_ptr(), weight.data_ptr(),
                                   bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), s,
                                   at::cuda::getCurrentCUDAStream()),
               "dwconv2d");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv2d_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& weight,
                                                                      at::IntArrayRef split_sizes,
                                                                      at::IntArrayRef kernel_sizes,
                                                                      bool bias_requires_grad) {
  DwconvShape s = shape_of(x, split_sizes, kernel_sizes);
  const c10::cuda::CUDAGuard guard(x.device());
  const DType dtype = cuda_dtype(x, "dwconv2d_backward");
  auto grad_x = empty_activation(x);
  s.layout = depthwise_layout(x, grad_x, &grad_y);
  auto grad_b = bias_requires_grad ? at::empty({s.C}, x.options()) : at::empty({0}, x.options());
  if (x.numel() == 0) {  // sums over an empty batch or empty planes
    return {grad_x, at::zeros_like(weight, at::MemoryFormat::Contiguous), grad_b.zero_()};
  }
  auto grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  auto workspace = at::empty({dwconv_cuda_backward_workspace(s)}, x.options().dtype(at::kFloat));
  check_launch(dwconv_cuda_backward(dtype, grad_y.data_ptr(), x.data_ptr(), weight.data_ptr(), grad_x.data_ptr(),
                                    grad_w.data_ptr(), bias_requires_grad ? grad_b.data_ptr() : nullptr,
                                    workspace.data_ptr<float>(), s, at::cuda::getCurrentCUDAStream()),
               "dwconv2d_backward");
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
