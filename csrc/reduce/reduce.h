// OSRA's key/value reduce path (sr_ratio > 1) as one op, BatchNorms included:
//   u  = depthwise conv (k x k, k = sr + 3, stride sr, padding k / 2, no bias) of x      (B, C, Ho, Wo), x's dtype
//   s  = BN2(w2 * GELU(BN1(u)))                      (w2: the depthwise 1x1 conv, one scalar per channel)
//   out = local_conv3x3(s) + local_bias + s          (zero padding 1; the "+ s" residual of the official code)
// BN uses the batch statistics when `training` (biased variance to normalise) and the running statistics
// otherwise; the op never writes the running statistics: it returns what the caller needs to update them.
//
// Forward outputs:
//   out   (B, C, Ho, Wo), x's dtype, contiguous.
//   u     (B, C, Ho, Wo), x's dtype: the strided conv's output rounded to x's dtype (as the official conv writes
//         it; the statistics and every later step use this rounded value). Written when training || save_u,
//         otherwise an empty (0,) tensor. The backward needs it.
//   stats (6, C), float32 (float64 for float64 x): rows mean1, var1, var1_unbiased, mean2, var2, var2_unbiased:
//         the batch statistics in training (the unbiased rows feed the running-statistic update), the running
//         statistics in eval (var rows repeated). The backward normalises with rows 0, 1, 3, 4.
// Parameters may each have their own floating dtype (fp32 BatchNorm/conv parameters with bf16 x under autocast):
// conv1_weight (C, 1, k, k), conv2_weight (C, 1, 1, 1), local_weight (C, 1, 3, 3), local_bias (C,), and per BN
// weight, bias, running_mean, running_var (C,). Gradients come back in the dtype of their input.
//
// Backward (fixed-order reductions only: deterministic): grad_x (x's dtype) and the gradients of conv1_weight,
// bn1_weight, bn1_bias, conv2_weight, bn2_weight, bn2_bias, local_weight, local_bias. In training mode the
// gradients flow through the batch statistics as torch's BatchNorm backward does.
//
// CUDA contract (declared below, not registered until implemented; the Triton kernels in
// transxnet_ops/triton/_reduce_kernels.py are the blueprint). Fixed-order fp32 partials, no atomics:
//   eval forward      1 launch : per (channel, batch block, output tile + 1-pixel halo): u on the halo'd tile
//                                from x, folded BN1/GELU/BN2, the 3x3 conv + residual, write out (and u).
//   training forward  3 launches: (1) conv -> u + per-program (count, mean, M2) partials of u;
//                                (2) Chan-combine the partials of the channel (every program, same order),
//                                    GELU etc. -> partials of w2*g, the channel's first program writes stats
//                                    rows 0-2; (3) combine the second partials (rows 3-5), s on the halo'd
//                                    tile from u, 3x3 conv + residual -> out.
//   eval backward     3 launches: (1) per output tile: ds = conv3x3^T(dy) + dy, then dv, dz, du (BN affine)
//                                    -> du workspace + partials (db3, dw3, dbeta2, dgamma2, dw2, dbeta1,
//                                    dgamma1); (2) grad_x by gathering du over the <= ceil(k/sr)^2 outputs
//                                    that read each input pixel, and (other blocks of the same launch) dw1
//                                    partials; (3) one block per channel sums the partials in order.
//   training backward 4 launches: as eval, with BN2's and BN1's batch-statistic terms: (1) ds + partials,
//                                (2) combine dbeta2/dgamma2, dv, dz + partials, (3) combine dbeta1/dgamma1,
//                                du on the fly, grad_x / dw1 partials, (4) the ordered sums.
#pragma once
#include <ATen/core/Tensor.h>
#include <tuple>

namespace transxnet_ops {

using ReduceForward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;  // out, u, stats
// grad_x, grad_conv1_weight, grad_bn1_weight, grad_bn1_bias, grad_conv2_weight, grad_bn2_weight, grad_bn2_bias,
// grad_local_weight, grad_local_bias
using ReduceBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

// The reduce path's parameters, as the op schema lists them. The backward leaves the running statistics
// undefined: it normalises with the forward's `stats`.
struct ReduceParams {
  at::Tensor conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var;
  at::Tensor conv2_weight, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var;
  at::Tensor local_weight, local_bias;
  int64_t sr_ratio;
  double eps1, eps2;
};

// Inputs checked by check_osra_reduce_inputs (reduce/reduce_checks.h); x, grad_out and u contiguous NCHW.
ReduceForward osra_reduce_forward_cpu(const at::Tensor& x, const ReduceParams& p, bool training, bool save_u);
ReduceBackward osra_reduce_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& u,
                                        const at::Tensor& stats, const ReduceParams& p, bool training);
#ifdef TRANSXNET_WITH_CUDA
ReduceForward osra_reduce_forward_cuda(const at::Tensor& x, const ReduceParams& p, bool training, bool save_u);
ReduceBackward osra_reduce_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& u,
                                         const at::Tensor& stats, const ReduceParams& p, bool training);
#endif

// Reduced map size of the strided conv: (H + 2 * (k / 2) - k) / sr + 1 with k = sr + 3.
inline int64_t osra_reduced_size(int64_t size, int64_t sr_ratio) {
  const int64_t k = sr_ratio + 3;
  return (size + 2 * (k / 2) - k) / sr_ratio + 1;
}

}  // namespace transxnet_ops
