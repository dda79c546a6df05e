// WMMA self-tests of the CUDA-on-CPU emulator: tiled D = alpha (A B + C) for every supported fragment shape,
// element type and layout, checked against torch matmul; and WMMA misuse that must fail (or, for
// layout-dependent fragment code, give wrong results as it would on a GPU).
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "selftest.h"

namespace txn_selftest_wmma {
namespace {

namespace wmma = nvcuda::wmma;

// One warp per M x N tile of D (rows x cols). A is rows x depth, B depth x cols, C and D rows x cols, each
// stored row- or col-major as the template/flags say (leading dimension = the stored row length).
template <class In, class T, class LA, class LB, int M, int N, int K>
__global__ void gemm_kernel(const T* a, const T* b, const float* c, float* d, int rows, int cols, int depth,
                            bool c_col_major, bool d_col_major, float alpha) {
  constexpr bool kAColMajor = std::is_same_v<LA, wmma::col_major>;
  constexpr bool kBColMajor = std::is_same_v<LB, wmma::col_major>;
  const int r0 = blockIdx.y * M, c0 = blockIdx.x * N;
  wmma::fragment<wmma::accumulator, M, N, K, float> acc;
  const int64_t c_off = c_col_major ? static_cast<int64_t>(c0) * rows + r0 : static_cast<int64_t>(r0) * cols + c0;
  wmma::load_matrix_sync(acc, c + c_off, c_col_major ? rows : cols, c_col_major ? wmma::mem_col_major : wmma::mem_row_major);
  wmma::fragment<wmma::matrix_a, M, N, K, In, LA> fa;
  wmma::fragment<wmma::matrix_b, M, N, K, In, LB> fb;
  for (int k0 = 0; k0 < depth; k0 += K) {
    const int64_t a_off = kAColMajor ? static_cast<int64_t>(k0) * rows + r0 : static_cast<int64_t>(r0) * depth + k0;
    const int64_t b_off = kBColMajor ? static_cast<int64_t>(c0) * depth + k0 : static_cast<int64_t>(k0) * cols + c0;
    wmma::load_matrix_sync(fa, a + a_off, kAColMajor ? rows : depth);
    wmma::load_matrix_sync(fb, b + b_off, kBColMajor ? depth : cols);
    if constexpr (std::is_same_v<In, wmma::precision::tf32>) {
      for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
      for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= alpha;  // layout-agnostic elementwise work
  const int64_t d_off = d_col_major ? static_cast<int64_t>(c0) * rows + r0 : static_cast<int64_t>(r0) * cols + c0;
  wmma::store_matrix_sync(d + d_off, acc, d_col_major ? rows : cols, d_col_major ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class In, class T, class LA, class LB, int M, int N, int K>
cudaError_t run_gemm(void* const* p, const int64_t* a) {
  const int rows = static_cast<int>(a[0]), cols = static_cast<int>(a[1]), depth = static_cast<int>(a[2]);
  const dim3 grid(static_cast<unsigned>(cols / N), static_cast<unsigned>(rows / M));
  gemm_kernel<In, T, LA, LB, M, N, K><<<grid, 32, 0, txn_emu::current_stream()>>>(
      static_cast<const T*>(p[0]), static_cast<const T*>(p[1]), static_cast<const float*>(p[2]),
      static_cast<float*>(p[3]), rows, cols, depth, a[5] != 0, a[6] != 0, 0.5f);
  return cudaGetLastError();
}

template <class In, class T, int M, int N, int K>
cudaError_t run_gemm_layouts(void* const* p, const int64_t* a) {
  const int layouts = static_cast<int>(a[4]);  // bit 0: A col-major, bit 1: B col-major
  switch (layouts) {
    case 0: return run_gemm<In, T, wmma::row_major, wmma::row_major, M, N, K>(p, a);
    case 1: return run_gemm<In, T, wmma::col_major, wmma::row_major, M, N, K>(p, a);
    case 2: return run_gemm<In, T, wmma::row_major, wmma::col_major, M, N, K>(p, a);
    default: return run_gemm<In, T, wmma::col_major, wmma::col_major, M, N, K>(p, a);
  }
}

// Misuse. kind 0: x[i] of an accumulator copied into x[i] of a matrix_a fragment (layout-dependent: wrong
// values, no error); 1: one lane changes its fragment; 2: half a warp calls mma_sync; 3: misaligned pointer.
__global__ void misuse_kernel(const __half* a, const __half* b, float* d, int kind) {
  const int lane = threadIdx.x % 32;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.f);
  wmma::load_matrix_sync(fa, kind == 3 ? a + 1 : a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  if (kind == 1 && lane == 0) fa.x[0] = __float2half(1.f);
  if (kind == 2 && lane >= 16) return;
  wmma::mma_sync(acc, fa, fb, acc);
  if (kind == 0) {
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = __float2half(acc.x[i]);
    wmma::fill_fragment(acc, 0.f);
    wmma::mma_sync(acc, fa, fb, acc);  // (A B) B, if the fragment types shared a layout
  }
  wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}

__global__ void tf32_round_kernel(const float* in, float* out, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = wmma::__float_to_tf32(in[i]);
}

}  // namespace
}  // namespace txn_selftest_wmma

cudaError_t txn_emu_selftest_wmma(const char* name, void* const* p, int n_ptrs, const int64_t* a, int n_args,
                                  bool* found) {
  using namespace txn_selftest_wmma;
  *found = true;
  if (std::strcmp(name, "wmma_gemm") == 0 && n_ptrs == 4 && n_args == 9) {
    // rows, cols, depth, (unused), layouts, c_col_major, d_col_major, dtype (0 f16, 1 bf16, 2 tf32), shape
    const int dtype = static_cast<int>(a[7]), shape = static_cast<int>(a[8]);
    if (dtype == 2) return run_gemm_layouts<wmma::precision::tf32, float, 16, 16, 8>(p, a);
    if (dtype == 0) {
      if (shape == 0) return run_gemm_layouts<__half, __half, 16, 16, 16>(p, a);
      if (shape == 1) return run_gemm_layouts<__half, __half, 32, 8, 16>(p, a);
      return run_gemm_layouts<__half, __half, 8, 32, 16>(p, a);
    }
    if (shape == 0) return run_gemm_layouts<__nv_bfloat16, __nv_bfloat16, 16, 16, 16>(p, a);
    if (shape == 1) return run_gemm_layouts<__nv_bfloat16, __nv_bfloat16, 32, 8, 16>(p, a);
    return run_gemm_layouts<__nv_bfloat16, __nv_bfloat16, 8, 32, 16>(p, a);
  }
  if (std::strcmp(name, "wmma_misuse") == 0 && n_ptrs == 3 && n_args == 1) {
    misuse_kernel<<<1, 32, 0, txn_emu::current_stream()>>>(static_cast<const __half*>(p[0]),
                                                            static_cast<const __half*>(p[1]), static_cast<float*>(p[2]),
                                                            static_cast<int>(a[0]));
    return cudaGetLastError();
  }
  if (std::strcmp(name, "tf32_round") == 0 && n_ptrs == 2 && n_args == 1) {
    tf32_round_kernel<<<1, 128, 0, txn_emu::current_stream()>>>(static_cast<const float*>(p[0]),
                                                                 static_cast<float*>(p[1]), static_cast<int>(a[0]));
    return cudaGetLastError();
  }
  *found = false;
  return cudaErrorInvalidValue;
}
