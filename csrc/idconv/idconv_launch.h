// IDConv CUDA launchers: raw pointers (element type given by DType), sizes, the caller's stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_dtype.h"

namespace transxnet_ops {

// Output tiles per plane of the weight-gradient kernel (size of the partial-sum buffer's middle dim).
int64_t idconv_cuda_tiles(int64_t H, int64_t W);

// y = x (*) w + bias per plane; flip=true correlates with the flipped kernel (grad_x). bias may be null.
cudaError_t idconv_cuda_forward(DType dtype, const void* x, const void* w, const void* bias, void* y,
                                int64_t planes, int64_t H, int64_t W, int64_t K, bool flip, cudaStream_t stream);

// grad_w (planes, K, K) and grad_b (planes) via fp32 per-tile partials (planes, tiles, K*K+1), summed in
// tile order by a second kernel: deterministic, no atomics.
cudaError_t idconv_cuda_weight_grad(DType dtype, const void* grad_y, const void* x, float* partial,
                                    void* grad_w, void* grad_b, int64_t planes, int64_t H, int64_t W, int64_t K,
                                    cudaStream_t stream);

}  // namespace transxnet_ops
