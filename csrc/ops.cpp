// Op schemas of the transxnet_ops library and their CPU/CUDA registrations.
// Autograd and fake (meta) implementations are registered from Python (transxnet_ops/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "checks.h"
#include "dwconv/dwconv.h"
#include "idconv/idconv.h"
#include "osra/attn.h"

// `import transxnet_ops._C` loads this library, which runs the static registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#ifdef TRANSXNET_WITH_CUDA
  if (module) PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  if (module) PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  return module;
}
}

namespace transxnet_ops {
namespace {

template <typename Fwd>
at::Tensor idconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_idconv_inputs(x, weight, bias);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  return fwd(x.contiguous(), weight.contiguous(), b);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> idconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x,
                                                                    const at::Tensor& weight) {
  check_idconv_inputs(x, weight, std::nullopt);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "idconv_backward: grad_y must match x, got ", grad_y.sizes());
  return bwd(grad_y.contiguous(), x.contiguous(), weight.contiguous());
}

std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

template <typename Fwd>
std::tuple<at::Tensor, at::Tensor> attn_impl(Fwd fwd, const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const std::optional<at::Tensor>& bias,
                                             double scale) {
  check_attn_inputs(q, k, v, bias);
  return fwd(q.contiguous(), k.contiguous(), v.contiguous(), contiguous_opt(bias), scale);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attn_backward_impl(
    Bwd bwd, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale,
    bool bias_requires_grad) {
  check_attn_inputs(q, k, v, bias);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "osra_attention_backward: grad_out and out must be shaped like q");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == q.size(2) &&
                  lse.scalar_type() == (q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "osra_attention_backward: lse must be (B, H, N) in float32 (float64 for float64 inputs), got ",
              lse.sizes(), " ", lse.scalar_type());
  return bwd(grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), contiguous_opt(bias),
             out.contiguous(), lse.contiguous(), scale, bias_requires_grad);
}

template <typename Fwd>
at::Tensor dwconv_impl(Fwd fwd, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef split_sizes, at::IntArrayRef kernel_sizes) {
  check_dwconv_inputs(x, weight, bias, split_sizes, kernel_sizes);
  return fwd(x.contiguous(), weight.contiguous(), contiguous_opt(bias), split_sizes, kernel_sizes);
}

template <typename Bwd>
std::tuple<at::Tensor, at::Tensor, at::Tensor> dwconv_backward_impl(Bwd bwd, const at::Tensor& grad_y,
                                                                    const at::Tensor& x, const at::Tensor& weight,
                                                                    at::IntArrayRef split_sizes,
                                                                    at::IntArrayRef kernel_sizes, bool bias_grad) {
  check_dwconv_inputs(x, weight, std::nullopt, split_sizes, kernel_sizes);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "dwconv2d_backward: grad_y must match x, got ", grad_y.sizes());
  return bwd(grad_y.contiguous(), x.contiguous(), weight.contiguous(), split_sizes, kernel_sizes, bias_grad);
}

#define TRANSXNET_REGISTER_DWCONV(m, dev)                                                              \
  m.impl("dwconv2d", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,  \
                        at::IntArrayRef splits, at::IntArrayRef ks) {                                  \
    return dwconv_impl(dwconv2d_forward_##dev, x, w, b, splits, ks);                                   \
  });                                                                                                  \
  m.impl("dwconv2d_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w,       \
                                 at::IntArrayRef splits, at::IntArrayRef ks, bool bias_grad) {         \
    return dwconv_backward_impl(dwconv2d_backward_##dev, gy, x, w, splits, ks, bias_grad);             \
  });

#define TRANSXNET_REGISTER_IMPLS(m, dev)                                                            \
  m.impl("idconv", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) { \
    return idconv_impl(idconv_forward_##dev, x, w, b);                                              \
  });                                                                                               \
  m.impl("idconv_backward", [](const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w) {    \
    return idconv_backward_impl(idconv_backward_##dev, gy, x, w);                                   \
  });                                                                                               \
  m.impl("osra_attention", [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,        \
                              const std::optional<at::Tensor>& b, double s) {                       \
    return attn_impl(osra_attention_forward_##dev, q, k, v, b, s);                                  \
  });                                                                                               \
  m.impl("osra_attention_backward",                                                                 \
         [](const at::Tensor& go, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,    \
            const std::optional<at::Tensor>& b, const at::Tensor& o, const at::Tensor& lse, double s, \
            bool brg) {                                                                             \
           return attn_backward_impl(osra_attention_backward_##dev, go, q, k, v, b, o, lse, s, brg); \
         });

}  // namespace

TORCH_LIBRARY(transxnet_ops, m) {
  m.def("idconv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("idconv_backward(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("dwconv2d(Tensor x, Tensor weight, Tensor? bias, int[] split_sizes, int[] kernel_sizes) -> Tensor");
  m.def(
      "dwconv2d_backward(Tensor grad_y, Tensor x, Tensor weight, int[] split_sizes, int[] kernel_sizes, "
      "bool bias_requires_grad) -> (Tensor, Tensor, Tensor)");
  m.def("osra_attention(Tensor q, Tensor k, Tensor v, Tensor? bias, float scale) -> (Tensor, Tensor)");
  m.def(
      "osra_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? bias, "
      "Tensor out, Tensor lse, float scale, bool bias_requires_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(transxnet_ops, CPU, m) {
  TRANSXNET_REGISTER_IMPLS(m, cpu)
  TRANSXNET_REGISTER_DWCONV(m, cpu)
}

#ifdef TRANSXNET_WITH_CUDA
TORCH_LIBRARY_IMPL(transxnet_ops, CUDA, m) { TRANSXNET_REGISTER_IMPLS(m, cuda) }
#endif

}  // namespace transxnet_ops
