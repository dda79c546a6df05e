// IDConv CUDA entry points: allocation, device guard, torch's current stream; kernels in idconv_cuda.cu.
#include "cuda_binding.h"
#include "idconv/idconv.h"
#include "idconv/idconv_launch.h"

namespace transxnet_ops {

namespace {
constexpr int64_t kMaxKernelSize = 31;

void check_cuda_kernel_size(const at::Tensor& weight) {
  TORCH_CHECK(weight.size(2) <= kMaxKernelSize, "idconv: the CUDA kernels support K <= ", kMaxKernelSize,
              ", got K=", weight.size(2));
}
}  // namespace

at::Tensor idconv_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_cuda_kernel_size(weight);
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  check_launch(idconv_cuda_forward(cuda_dtype(x, "idconv"), x.data_ptr(), weight.data_ptr(),
                                   bias.has_value() ? bias->data_ptr() : nullptr, y.data_ptr(), x.size(0) * x.size(1),
                                   x.size(2), x.size(3), weight.size(2), /*flip=*/false,
                                   at::cuda::getCurrentCUDAStream()),
               "idconv");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  check_cuda_kernel_size(weight);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const DType dtype = cuda_dtype(x, "idconv_backward");
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2);
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto grad_w = at::empty_like(weight, at::MemoryFormat::Contiguous);
  auto grad_b = at::empty({x.size(0), x.size(1)}, x.options());
  auto partial = at::empty({planes, idconv_cuda_tiles(H, W), K * K + 1}, x.options().dtype(at::kFloat));
  // grad_x is the forward conv of grad_y with the flipped kernel
  check_launch(idconv_cuda_forward(dtype, grad_y.data_ptr(), weight.data_ptr(), nullptr, grad_x.data_ptr(), planes,
                                   H, W, K, /*flip=*/true, stream),
               "idconv_backward");
  check_launch(idconv_cuda_weight_grad(dtype, grad_y.data_ptr(), x.data_ptr(), partial.data_ptr<float>(),
                                       grad_w.data_ptr(), grad_b.data_ptr(), planes, H, W, K, stream),
               "idconv_backward");
  return {grad_x, grad_w, grad_b};
}

}  // namespace transxnet_ops
