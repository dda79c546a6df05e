// IDConv weight generation CUDA launchers (contract and math in reduce/idconv_weights.h): raw pointers, the
// logits' element type given by DType, weight and bias in their own dtypes, the caller's stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"
#include "reduce/param_launch.h"

namespace transxnet_ops {

struct IdconvWeightsShape {
  int64_t B, G, C, K;
  int64_t KL;                 // the logits' spatial size: K, or K + 1 when packed
  bool has_bias;              // bias (G, C) given
  bool separate_bias_logits;  // bias logits in their own (B, G*C) tensor (else at the packed logits' [K, K])
};

// weight_out (B, C, K, K) and bias_out (B, C) (when has_bias) in the logits' dtype: one launch.
cudaError_t idconv_weights_cuda_forward(DType dtype, const IdconvWeightsShape& s, const void* logits,
                                        const void* bias_logits, ParamRef weight, ParamRef bias, void* weight_out,
                                        void* bias_out, cudaStream_t stream);

// grad_logits (like logits, every entry written: the packed layout's unused slots get 0), grad_bias_logits
// (when separate), grad_weight (G, C, K, K) and grad_bias (G, C) in their own dtypes: one launch; the parameter
// gradients are summed over the batch in a fixed order.
cudaError_t idconv_weights_cuda_backward(DType dtype, const IdconvWeightsShape& s, const void* grad_weight_out,
                                         const void* grad_bias_out, const void* logits, const void* bias_logits,
                                         ParamRef weight, ParamRef bias, void* grad_logits, void* grad_bias_logits,
                                         GradRef grad_weight, GradRef grad_bias, cudaStream_t stream);

}  // namespace transxnet_ops
