// Parameters and parameter gradients of the reduce-family CUDA kernels, each in its own floating dtype (fp32
// BatchNorm/conv parameters next to bf16 activations under autocast): a raw pointer and its DType.
#pragma once
#include "cuda_dtype.h"

namespace transxnet_ops {

struct ParamRef {
  const void* ptr;
  DType dtype;
};

struct GradRef {
  void* ptr;
  DType dtype;
};

}  // namespace transxnet_ops
