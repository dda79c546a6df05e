// Warp-level tensor-core products for the OSRA attention kernels (WMMA only: see CUDA_RULES).
//   bf16 / fp16: m16n16k16, fp32 accumulation.
//   fp32: 3xTF32 on m16n16k8 - every operand is split x = hi + lo with hi = tf32(x), lo = tf32(x - hi), and
//   a*b ~ hi_a*hi_b + hi_a*lo_b + lo_a*hi_b (the dropped lo*lo term is ~2^-22 relative), so fp32 inputs keep
//   ~1e-6 accuracy on tensor cores instead of IEEE dots on CUDA cores.
// Fragments are only touched element-wise (scale, add a fragment of the same type): their (row, col) mapping is
// unspecified, so anything row-wise goes through shared memory.
#pragma once
#include <mma.h>

#include <type_traits>

#include "cuda_utils.cuh"

namespace transxnet_ops {
namespace attn {

namespace wmma = nvcuda::wmma;

template <typename T>
struct MmaTraits {  // __half and __nv_bfloat16
  using Operand = T;
  static constexpr int kK = 16;
  static constexpr bool kSplit = false;
};
template <>
struct MmaTraits<float> {
  using Operand = wmma::precision::tf32;
  static constexpr int kK = 8;
  static constexpr bool kSplit = true;
};

template <typename T>
using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, MmaTraits<T>::kK, float>;
template <typename T, typename Layout>
using AFrag = wmma::fragment<wmma::matrix_a, 16, 16, MmaTraits<T>::kK, typename MmaTraits<T>::Operand, Layout>;
template <typename T, typename Layout>
using BFrag = wmma::fragment<wmma::matrix_b, 16, 16, MmaTraits<T>::kK, typename MmaTraits<T>::Operand, Layout>;

// Address of the k-th step of a 16-wide operand stored with `Layout`, for A (16 x K, stepping along columns)
// or B (K x 16, stepping along rows).
template <typename Layout, typename T>
__device__ __forceinline__ const T* a_step(const T* a, int lda, int k) {
  return std::is_same<Layout, wmma::row_major>::value ? a + k : a + k * lda;
}
template <typename Layout, typename T>
__device__ __forceinline__ const T* b_step(const T* b, int ldb, int k) {
  return std::is_same<Layout, wmma::row_major>::value ? b + k * ldb : b + k;
}

template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
#pragma unroll
  for (int i = 0; i < hi.num_elements; ++i) {
    const float x = hi.x[i];
    const float h = wmma::__float_to_tf32(x);
    hi.x[i] = h;
    lo.x[i] = wmma::__float_to_tf32(x - h);
  }
}

// acc += A (16 x k_len) * B (k_len x 16), both in shared memory; k_len a multiple of 16.
template <typename T, typename LayoutA, typename LayoutB>
__device__ __forceinline__ void mma_accumulate(AccFrag<T>& acc, const T* a, int lda, const T* b, int ldb,
                                               int k_len) {
  constexpr int kK = MmaTraits<T>::kK;
#pragma unroll 1
  for (int k = 0; k < k_len; k += kK) {
    AFrag<T, LayoutA> a_hi;
    BFrag<T, LayoutB> b_hi;
    wmma::load_matrix_sync(a_hi, a_step<LayoutA>(a, lda, k), lda);
    wmma::load_matrix_sync(b_hi, b_step<LayoutB>(b, ldb, k), ldb);
    if constexpr (MmaTraits<T>::kSplit) {
      AFrag<T, LayoutA> a_lo;
      BFrag<T, LayoutB> b_lo;
      split_tf32(a_hi, a_lo);
      split_tf32(b_hi, b_lo);
      wmma::mma_sync(acc, a_lo, b_hi, acc);  // small terms first
      wmma::mma_sync(acc, a_hi, b_lo, acc);
    }
    wmma::mma_sync(acc, a_hi, b_hi, acc);
  }
}

template <typename T>
__device__ __forceinline__ void scale_frag(AccFrag<T>& f, float s) {
#pragma unroll
  for (int i = 0; i < f.num_elements; ++i) f.x[i] *= s;
}

template <typename T>
__device__ __forceinline__ void add_frag(AccFrag<T>& acc, const AccFrag<T>& f) {
#pragma unroll
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] += f.x[i];
}

// fn(frags[i]) for a runtime i. The compare chain keeps the array in registers (constant indices), and code that
// depends on i stays inside the caller's runtime loop instead of being hoisted, live, for every index.
template <typename Frag, int N, typename Fn>
__device__ __forceinline__ void with_frag(Frag (&frags)[N], int i, Fn&& fn) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    if (k == i) fn(frags[k]);
  }
}

}  // namespace attn
}  // namespace transxnet_ops
