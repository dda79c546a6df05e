// Op schemas of the transxnet_ops library and their CPU/CUDA registrations.
// Autograd and fake (meta) implementations are registered from Python (transxnet_ops/ops.py).
#include <Python.h>
#include <torch/library.h>

#include "op_impls.h"

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

TORCH_LIBRARY(transxnet_ops, m) {
  m.def("idconv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("idconv_backward(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("dwconv2d(Tensor x, Tensor weight, Tensor? bias, int[] split_sizes, int[] kernel_sizes) -> Tensor");
  m.def(
      "dwconv2d_backward(Tensor grad_y, Tensor x, Tensor weight, int[] split_sizes, int[] kernel_sizes, "
      "bool bias_requires_grad) -> (Tensor, Tensor, Tensor)");
  m.def(
      "dwconv2d_inference(Tensor x, Tensor weight, Tensor? bias, Tensor? in_scale, Tensor? in_shift, "
      "int[] split_sizes, int[] kernel_sizes, bool gelu) -> Tensor");
  m.def("osra_attention(Tensor q, Tensor k, Tensor v, Tensor? bias, float scale) -> (Tensor, Tensor)");
  m.def(
      "osra_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? bias, "
      "Tensor out, Tensor lse, float scale, bool bias_requires_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "osra_reduce(Tensor x, Tensor conv1_weight, Tensor bn1_weight, Tensor bn1_bias, Tensor bn1_running_mean, "
      "Tensor bn1_running_var, Tensor conv2_weight, Tensor bn2_weight, Tensor bn2_bias, Tensor bn2_running_mean, "
      "Tensor bn2_running_var, Tensor local_weight, Tensor local_bias, int sr_ratio, float eps1, float eps2, "
      "bool training, bool save_u) -> (Tensor, Tensor, Tensor)");
  m.def(
      "osra_reduce_backward(Tensor grad_out, Tensor x, Tensor u, Tensor stats, Tensor conv1_weight, "
      "Tensor bn1_weight, Tensor bn1_bias, Tensor conv2_weight, Tensor bn2_weight, Tensor bn2_bias, "
      "Tensor local_weight, Tensor local_bias, int sr_ratio, float eps1, float eps2, bool training) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "idconv_weights(Tensor logits, Tensor? bias_logits, Tensor weight, Tensor? bias) -> (Tensor, Tensor)");
  m.def(
      "idconv_weights_backward(Tensor grad_weight_out, Tensor grad_bias_out, Tensor logits, Tensor? bias_logits, "
      "Tensor weight, Tensor? bias) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(transxnet_ops, CPU, m) {
  TRANSXNET_REGISTER_IMPLS(m, cpu)
  TRANSXNET_REGISTER_DWCONV(m, cpu)
  m.impl("dwconv2d_inference", dwconv_inference_impl);
  TRANSXNET_REGISTER_REDUCE(m, cpu)
}

#ifdef TRANSXNET_WITH_CUDA
TORCH_LIBRARY_IMPL(transxnet_ops, CUDA, m) {
  TRANSXNET_REGISTER_IMPLS(m, cuda)
  TRANSXNET_REGISTER_DWCONV(m, cuda)
  TRANSXNET_REGISTER_REDUCE(m, cuda)
}
#endif

}  // namespace transxnet_ops
