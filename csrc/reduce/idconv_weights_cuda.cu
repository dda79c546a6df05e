// IDConv weight generation on CUDA (contract: reduce/idconv_weights.h; launchers: idconv_weights_launch.h).
//   forward  one thread per (sample, channel, slot): softmax over the G groups in fp32 registers, mixed with
//            the G learnable values of the slot (a kernel tap, or the bias).
//   backward one block per 32 (channel, slot) pairs x 8 sample phases: each thread walks the batch in order
//            (b = phase, phase + 8, ...), writes the logits' gradients and sums the parameters' gradients,
//            then the 8 phases are added in order: deterministic, no atomics, no partial buffers.
#include <cfloat>
#include <type_traits>

#include "reduce/idconv_weights_launch.h"
#include "reduce/reduce_common.cuh"

namespace transxnet_ops {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kPairs = 32;   // (channel, slot) pairs per backward block
constexpr int kPhases = 8;   // sample phases per backward block
constexpr int kGroupChunk = 4;  // parameter gradients accumulated in registers per pass over the batch

// Where one (sample, channel, slot) reads: G logits `stride` apart, G parameters `param_stride` apart.
struct SlotRef {
  int64_t logit, stride, param, param_stride;
  bool separate;  // logits in bias_logits rather than logits
  bool is_bias;
};

enum class SlotKind { Tap, PackedBias, SeparateBias, Unused };

struct Layout {
  IdconvWeightsShape s;
  __host__ __device__ int64_t taps() const { return s.K * s.K; }
  __host__ __device__ bool packed() const { return s.KL != s.K; }
  // slots per channel: the forward's outputs (taps, + bias) / the backward's (every logit position, + bias)
  __host__ __device__ int64_t forward_slots() const { return taps() + (s.has_bias ? 1 : 0); }
  __host__ __device__ int64_t backward_slots() const {
    return (packed() ? s.KL * s.KL : taps()) + (s.separate_bias_logits ? 1 : 0);
  }
  __device__ int64_t plane(int64_t b, int64_t c) const { return (b * s.G * s.C + c) * s.KL * s.KL; }

  __device__ SlotRef tap(int64_t b, int64_t c, int64_t i, int64_t j) const {
    return {plane(b, c) + i * s.KL + j, s.C * s.KL * s.KL, c * taps() + i * s.K + j, s.C * taps(), false, false};
  }
  __device__ SlotRef bias(int64_t b, int64_t c) const {
    if (s.separate_bias_logits) return {b * s.G * s.C + c, s.C, c, s.C, true, true};
    return {plane(b, c) + s.K * s.KL + s.K, s.C * s.KL * s.KL, c, s.C, false, true};  // packed [K, K]
  }
  // The backward's slot kind and its logit position (i, j) (kernel taps and packed entries).
  __device__ SlotKind backward_kind(int64_t slot, int64_t* i, int64_t* j) const {
    const int64_t positions = packed() ? s.KL * s.KL : taps();
    if (slot >= positions) return SlotKind::SeparateBias;
    const int64_t width = packed() ? s.KL : s.K;
    *i = slot / width;
    *j = slot % width;
    if (*i < s.K && *j < s.K) return SlotKind::Tap;
    return *i == s.K && *j == s.K && s.has_bias && !s.separate_bias_logits ? SlotKind::PackedBias : SlotKind::Unused;
  }
};

// softmax over the G logits at l[g * stride]: its max, its normaliser and the mix sum_g p_g * w_g.
struct Softmax {
  float top, total, mixed;
};

template <typename T>
__device__ __forceinline__ Softmax softmax_mix(const T* l, int64_t stride, ParamRef w, int64_t param,
                                               int64_t param_stride, int64_t G) {
  float top = -FLT_MAX;
  for (int64_t g = 0; g < G; ++g) top = fmaxf(top, to_float(l[g * stride]));
  float total = 0.0f, mixed = 0.0f;
  for (int64_t g = 0; g < G; ++g) {
    const float e = expf(to_float(l[g * stride]) - top);
    total += e;
    mixed = fmaf(e, load_param(w, param + g * param_stride), mixed);
  }
  return {top, total, mixed / total};
}

template <typename T>
__global__ void __launch_bounds__(kForwardThreads) idconv_weights_forward_kernel(
    Layout l, const T* __restrict__ logits, const T* __restrict__ bias_logits, ParamRef weight, ParamRef bias,
    T* __restrict__ weight_out, T* __restrict__ bias_out) {
  const int64_t slots = l.forward_slots();
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kForwardThreads + threadIdx.x;
  if (index >= l.s.B * l.s.C * slots) return;
  const int64_t slot = index % slots, bc = index / slots;
  const int64_t b = bc / l.s.C, c = bc % l.s.C;
  if (slot < l.taps()) {
    const SlotRef r = l.tap(b, c, slot / l.s.K, slot % l.s.K);
    weight_out[bc * l.taps() + slot] =
        from_float<T>(softmax_mix(logits + r.logit, r.stride, weight, r.param, r.param_stride, l.s.G).mixed);
  } else {
    const SlotRef r = l.bias(b, c);
    const T* src = r.separate ? bias_logits : logits;
    bias_out[bc] = from_float<T>(softmax_mix(src + r.logit, r.stride, bias, r.param, r.param_stride, l.s.G).mixed);
  }
}

template <typename T>
__global__ void __launch_bounds__(kPairs * kPhases, 2) idconv_weights_backward_kernel(
    Layout l, const T* __restrict__ grad_weight_out, const T* __restrict__ grad_bias_out, const T* __restrict__ logits,
    const T* __restrict__ bias_logits, ParamRef weight, ParamRef bias, T* __restrict__ grad_logits,
    T* __restrict__ grad_bias_logits, GradRef grad_weight, GradRef grad_bias) {
  __shared__ float phase_sums[kPhases][kGroupChunk][kPairs];
  const int col = threadIdx.x % kPairs, phase = threadIdx.x / kPairs;
  const int64_t slots = l.backward_slots();
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kPairs + col;
  const bool valid = pair < l.s.C * slots;
  const int64_t c = valid ? pair / slots : 0, slot = valid ? pair % slots : 0;
  int64_t i = 0, j = 0;
  const SlotKind kind = valid ? l.backward_kind(slot, &i, &j) : SlotKind::Unused;
  const bool is_bias = kind == SlotKind::PackedBias || kind == SlotKind::SeparateBias;
  const ParamRef param = is_bias ? bias : weight;
  const T* src = kind == SlotKind::SeparateBias ? bias_logits : logits;
  T* dst = kind == SlotKind::SeparateBias ? grad_bias_logits : grad_logits;
  const int64_t G = l.s.G;

  for (int64_t g0 = 0; g0 < G; g0 += kGroupChunk) {
    float acc[kGroupChunk];
#pragma unroll
    for (int k = 0; k < kGroupChunk; ++k) acc[k] = 0.0f;
    for (int64_t b = phase; valid && b < l.s.B; b += kPhases) {
      const SlotRef r = kind == SlotKind::Tap || kind == SlotKind::Unused ? l.tap(b, c, i, j) : l.bias(b, c);
      if (kind == SlotKind::Unused) {  // a packed row/column-K entry that feeds nothing
        for (int64_t g = g0; g < G && g < g0 + kGroupChunk; ++g) dst[r.logit + g * r.stride] = from_float<T>(0.0f);
        continue;
      }
      const float d = to_float(is_bias ? grad_bias_out[b * l.s.C + c]
                                       : grad_weight_out[(b * l.s.C + c) * l.taps() + i * l.s.K + j]);
      const Softmax sm = softmax_mix(src + r.logit, r.stride, param, r.param, r.param_stride, G);
#pragma unroll
      for (int k = 0; k < kGroupChunk; ++k) {
        const int64_t g = g0 + k;
        if (g >= G) break;
        const float pd = expf(to_float(src[r.logit + g * r.stride]) - sm.top) / sm.total * d;
        dst[r.logit + g * r.stride] = from_float<T>(pd * (load_param(param, r.param + g * r.param_stride) - sm.mixed));
        acc[k] += pd;
      }
    }
#pragma unroll
    for (int k = 0; k < kGroupChunk; ++k) phase_sums[phase][k][col] = acc[k];
    __syncthreads();
    if (phase == 0 && valid && kind != SlotKind::Unused) {
      for (int k = 0; k < kGroupChunk && g0 + k < G; ++k) {
        float sum = 0.0f;
        for (int q = 0; q < kPhases; ++q) sum += phase_sums[q][k][col];
        const int64_t g = g0 + k;
        if (is_bias) {
          store_grad(grad_bias, g * l.s.C + c, sum);
        } else {
          store_grad(grad_weight, (g * l.s.C + c) * l.taps() + i * l.s.K + j, sum);
        }
      }
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t idconv_weights_cuda_forward(DType dtype, const IdconvWeightsShape& s, const void* logits,
                                        const void* bias_logits, ParamRef weight, ParamRef bias, void* weight_out,
                                        void* bias_out, cudaStream_t stream) {
  const Layout l{s};
  const int64_t n = s.B * s.C * l.forward_slots();
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(ceil_div(n, kForwardThreads));
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    idconv_weights_forward_kernel<T><<<blocks, kForwardThreads, 0, stream>>>(
        l, static_cast<const T*>(logits), static_cast<const T*>(bias_logits), weight, bias, static_cast<T*>(weight_out),
        static_cast<T*>(bias_out));
    return cudaGetLastError();
  });
}

cudaError_t idconv_weights_cuda_backward(DType dtype, const IdconvWeightsShape& s, const void* grad_weight_out,
                                         const void* grad_bias_out, const void* logits, const void* bias_logits,
                                         ParamRef weight, ParamRef bias, void* grad_logits, void* grad_bias_logits,
                                         GradRef grad_weight, GradRef grad_bias, cudaStream_t stream) {
  const Layout l{s};
  const int64_t pairs = s.C * l.backward_slots();
  if (pairs == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(ceil_div(pairs, kPairs));
  return dispatch_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    idconv_weights_backward_kernel<T><<<blocks, kPairs * kPhases, 0, stream>>>(
        l, static_cast<const T*>(grad_weight_out), static_cast<const T*>(grad_bias_out), static_cast<const T*>(logits),
        static_cast<const T*>(bias_logits), weight, bias, static_cast<T*>(grad_logits),
        static_cast<T*>(grad_bias_logits), grad_weight, grad_bias);
    return cudaGetLastError();
  });
}

}  // namespace transxnet_ops
