// OSRA attention CUDA launchers: raw pointers (element type given by DType), the caller's stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"

namespace transxnet_ops {

struct AttnShape {
  int64_t B, H, N, M, D;
  int64_t Bb, Hb;  // bias batch/heads (1 = broadcast); ignored without bias
};

constexpr int64_t kMaxCudaHeadDim = 128;

// out (B,H,N,D), lse (B,H,N) float32; bias (Bb,Hb,N,M) or null. Needs N, M >= 1.
cudaError_t osra_cuda_forward(DType dtype, const void* q, const void* k, const void* v, const void* bias, void* out,
                              float* lse, const AttnShape& s, float scale, cudaStream_t stream);

// Floats of fp32 workspace osra_cuda_backward needs for this shape on the current device (may be 0).
int64_t osra_cuda_backward_workspace(DType dtype, const AttnShape& s, bool want_grad_bias);

// grad_q, grad_k, grad_v, and grad_bias (Bb,Hb,N,M) when grad_bias is non-null; `workspace` holds
// osra_cuda_backward_workspace(...) floats. Deterministic: no atomics, fixed-order reductions. Needs N, M >= 1.
cudaError_t osra_cuda_backward(DType dtype, const void* grad_out, const void* q, const void* k, const void* v,
                               const void* bias, const void* out, const float* lse, float* workspace, void* grad_q,
                               void* grad_k, void* grad_v, void* grad_bias, const AttnShape& s, float scale,
                               cudaStream_t stream);

}  // namespace transxnet_ops
