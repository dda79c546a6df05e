// OSRA reduce path CUDA entry points (contract in reduce/reduce.h): checks, allocation, device guard, torch's
// current stream; kernels in reduce_cuda.cu.
#include <array>
#include <limits>

#include "reduce/param_binding.h"
#include "reduce/reduce.h"
#include "reduce/reduce_launch.h"

namespace transxnet_ops {

namespace {

ReduceShape shape_of(const at::Tensor& x, const ReduceParams& p, const char* op) {
  const int64_t k = p.sr_ratio + 3;
  TORCH_CHECK(k * k <= kReduceMaxTaps, op, ": the CUDA kernels support sr_ratio <= 97, got ", p.sr_ratio);
  const ReduceShape s{x.size(0), x.size(1), x.size(2), x.size(3), osra_reduced_size(x.size(2), p.sr_ratio),
                      osra_reduced_size(x.size(3), p.sr_ratio), p.sr_ratio};
  const int64_t tiles = ((s.Ho + 15) / 16) * ((s.Wo + 15) / 16);
  TORCH_CHECK(s.B * s.C * tiles <= std::numeric_limits<int32_t>::max(), op, ": x ", x.sizes(),
              " needs more thread blocks than one launch takes");
  return s;
}

// The parameters as the kernels read them; `held` keeps converted copies alive during the launches.
struct KernelParams {
  std::vector<at::Tensor> held;
  ReduceParamRefs refs;

  KernelParams(const ReduceParams& p, const char* op) {
    auto ref = [&](const at::Tensor& t) {
      held.push_back(kernel_param(t));
      return param_ref(held.back(), op);
    };
    refs = {ref(p.conv1_weight), ref(p.bn1_weight),        ref(p.bn1_bias),        ref(p.bn1_running_mean),
            ref(p.bn1_running_var), ref(p.conv2_weight),   ref(p.bn2_weight),      ref(p.bn2_bias),
            ref(p.bn2_running_mean), ref(p.bn2_running_var), ref(p.local_weight), ref(p.local_bias),
            static_cast<float>(p.eps1), static_cast<float>(p.eps2)};
  }
};

}  // namespace

ReduceForward osra_reduce_forward_cuda(const at::Tensor& x, const ReduceParams& p, bool training, bool save_u) {
  const ReduceShape s = shape_of(x, p, "osra_reduce");
  TORCH_CHECK(!training || s.B * s.Ho * s.Wo > 1, "osra_reduce: BatchNorm training needs more than 1 value per ",
              "channel, got B * Ho * Wo = ", s.B * s.Ho * s.Wo);
  const c10::cuda::CUDAGuard guard(x.device());
  const DType dtype = cuda_dtype(x, "osra_reduce");
  auto out = at::empty({s.B, s.C, s.Ho, s.Wo}, x.options());
  auto u = (training || save_u) ? at::empty({s.B, s.C, s.Ho, s.Wo}, x.options()) : at::empty({0}, x.options());
  if (s.B * s.C == 0) {  // no block to launch: eval reports the running statistics
    auto stats = at::stack({p.bn1_running_mean, p.bn1_running_var, p.bn1_running_var, p.bn2_running_mean,
                            p.bn2_running_var, p.bn2_running_var})
                     .to(at::kFloat);
    return {out, u, stats};
  }
  auto stats = at::empty({6, s.C}, x.options().dtype(at::kFloat));
  const KernelParams params(p, "osra_reduce");
  auto workspace = at::empty({osra_reduce_cuda_forward_workspace(s, training)}, x.options().dtype(at::kFloat));
  check_launch(osra_reduce_cuda_forward(dtype, s, params.refs, training, x.data_ptr(), out.data_ptr(),
                                        u.numel() ? u.data_ptr() : nullptr, stats.data_ptr<float>(),
                                        workspace.data_ptr<float>(), at::cuda::getCurrentCUDAStream()),
               "osra_reduce");
  return {out, u, stats};
}

ReduceBackward osra_reduce_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& u,
                                         const at::Tensor& stats, const ReduceParams& p, bool training) {
  const ReduceShape s = shape_of(x, p, "osra_reduce_backward");
  const std::array<int64_t, 4> map_shape{s.B, s.C, s.Ho, s.Wo};
  TORCH_CHECK(u.sizes() == map_shape && grad_out.sizes() == map_shape,
              "osra_reduce_backward: grad_out and u must be (B, C, Ho, Wo) = ", at::IntArrayRef(map_shape), ", got ",
              grad_out.sizes(),
              " and ", u.sizes());
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({6, s.C}) && stats.scalar_type() == at::kFloat &&
                  stats.device() == x.device(),
              "osra_reduce_backward: stats must be (6, C) float32 on x's device, got ", stats.sizes(), " ",
              stats.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const DType dtype = cuda_dtype(x, "osra_reduce_backward");
  const KernelParams params(p, "osra_reduce_backward");
  const at::Tensor* wrt[] = {&p.conv1_weight, &p.bn1_weight, &p.bn1_bias,     &p.conv2_weight,
                             &p.bn2_weight,   &p.bn2_bias,   &p.local_weight, &p.local_bias};
  std::vector<at::Tensor> grads;
  for (const at::Tensor* t : wrt) grads.push_back(grad_buffer(*t));
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (s.B * s.C == 0) {
    for (auto& g : grads) g.zero_();
  } else {
    const ReduceGradRefs g{grad_ref(grads[0], "osra_reduce_backward"), grad_ref(grads[1], "osra_reduce_backward"),
                           grad_ref(grads[2], "osra_reduce_backward"), grad_ref(grads[3], "osra_reduce_backward"),
                           grad_ref(grads[4], "osra_reduce_backward"), grad_ref(grads[5], "osra_reduce_backward"),
                           grad_ref(grads[6], "osra_reduce_backward"), grad_ref(grads[7], "osra_reduce_backward")};
    auto workspace = at::empty({osra_reduce_cuda_backward_workspace(s)}, x.options().dtype(at::kFloat));
    const auto stats_c = stats.contiguous();
    check_launch(osra_reduce_cuda_backward(dtype, s, params.refs, g, training, grad_out.data_ptr(), x.data_ptr(),
                                           u.data_ptr(), stats_c.data_ptr<float>(), grad_x.data_ptr(),
                                           workspace.data_ptr<float>(), at::cuda::getCurrentCUDAStream()),
                 "osra_reduce_backward");
  }
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = as_param_dtype(grads[i], *wrt[i]);
  return {grad_x, grads[0], grads[1], grads[2], grads[3], grads[4], grads[5], grads[6], grads[7]};
}

}  // namespace transxnet_ops
