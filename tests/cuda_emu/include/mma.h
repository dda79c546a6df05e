// CUDA-on-CPU test emulator: nvcuda::wmma (the real mma.h is nvcc-only).
// Supported fragments, as on sm_80/sm_90: __half and __nv_bfloat16 at m16n16k16 / m32n8k16 / m8n32k16 with float
// (or, for __half, __half) accumulators, and precision::tf32 at m16n16k8 with float accumulators.
// The element-to-lane mapping of fragments is unspecified on hardware, so here every lane holds the whole tile,
// stored in an order that differs between matrix_a, matrix_b (per layout) and accumulator fragments: elementwise
// work on x[i] within one fragment type stays correct, mixing x[i] of different fragment types gives wrong
// results (as it would on a GPU). load/store/mma are warp collectives: all 32 lanes must call them from the same
// place with the same pointer and ldm (checked), and their fragments must hold the same values in every lane
// (checked: a lane-dependent change of x[i] is layout-dependent code). Pointers must be 32-byte aligned and ldm
// a multiple of 16 bytes, as the hardware requires. mma_sync multiplies exactly (products of 16-bit or tf32
// inputs are exact in fp32) and accumulates in fp32 in k order; tf32 inputs lose their low 13 mantissa bits,
// as tensor cores ignore them; the hardware's accumulation order and rounding are not modelled.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "txn_emu/device.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

// Round to tf32 (10 explicit mantissa bits), to nearest with ties away from zero, as cvt.rna.tf32.f32 does.
inline float __float_to_tf32(float in) {
  uint32_t u;
  std::memcpy(&u, &in, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // NaN and inf unchanged
  float out;
  std::memcpy(&out, &u, 4);
  return out;
}

namespace detail {

template <class T>
struct traits {
  using element_type = T;
  using storage_type = T;
};
template <>
struct traits<precision::tf32> {
  using element_type = precision::tf32;
  using storage_type = float;
};

template <class T>
constexpr bool is_16bit = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

template <class Use, int M, int N, int K, class T, class Layout>
constexpr bool supported() {
  constexpr bool shape16 = (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) ||
                           (M == 8 && N == 32 && K == 16);
  constexpr bool shape_tf32 = M == 16 && N == 16 && K == 8;
  constexpr bool layout_ab = std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>;
  if constexpr (std::is_same_v<Use, accumulator>) {
    return std::is_void_v<Layout> &&
           ((shape16 && (std::is_same_v<T, float> || std::is_same_v<T, __half>)) ||
            (shape_tf32 && std::is_same_v<T, float>));
  } else if constexpr (std::is_same_v<Use, matrix_a> || std::is_same_v<Use, matrix_b>) {
    return layout_ab && ((shape16 && is_16bit<T>) || (shape_tf32 && std::is_same_v<T, precision::tf32>));
  }
  return false;
}

// x[i] holds tile element (i * stride) mod size, row-major in the tile; odd strides are bijections.
template <class Use, class Layout>
constexpr int storage_stride() {
  if constexpr (std::is_same_v<Use, accumulator>) return 3;
  if constexpr (std::is_same_v<Use, matrix_a>) return std::is_same_v<Layout, row_major> ? 5 : 13;
  return std::is_same_v<Layout, row_major> ? 7 : 11;
}

inline float to_f32(float v) { return v; }
inline float to_f32(__half v) { return __half2float(v); }
inline float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float tf32_truncate(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(detail::supported<Use, M, N, K, T, Layout>(),
                "this WMMA fragment (use, shape, element type, layout) does not exist on sm_80/sm_90");

 public:
  using element_type = typename detail::traits<T>::element_type;
  using storage_element_type = typename detail::traits<T>::storage_type;
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  enum { num_elements = rows * cols, num_storage_elements = rows * cols };
  storage_element_type x[num_elements];

  // Emulator only: the tile coordinates of x[i].
  static constexpr int tile_index(int i) { return (i * detail::storage_stride<Use, Layout>()) & (num_elements - 1); }
};

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                          const typename fragment<Use, M, N, K, T, Layout>::storage_element_type& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

namespace detail {

struct MemArgs {
  const void* ptr;
  unsigned ldm;
  bool row_major_mem;
};

[[noreturn]] inline void fault_at(const ::txn_emu::WarpOp& op, const char* what) {
  ::txn_emu::fault(cudaErrorLaunchFailure, "%s at %s:%d: %s", op.what, op.file, op.line, what);
}

inline void check_uniform_args(::txn_emu::WarpOp* const* lanes) {
  const auto* a0 = static_cast<const MemArgs*>(lanes[0]->in);
  for (int l = 1; l < 32; ++l) {
    const auto* a = static_cast<const MemArgs*>(lanes[l]->in);
    if (a->ptr != a0->ptr || a->ldm != a0->ldm || a->row_major_mem != a0->row_major_mem) {
      fault_at(*lanes[l], "pointer, ldm or layout differ between the lanes of the warp");
    }
  }
}

template <class Frag>
void check_uniform_fragment(::txn_emu::WarpOp* const* lanes, const Frag* const* frags, const char* which) {
  for (int l = 1; l < 32; ++l) {
    if (std::memcmp(frags[l], frags[0], sizeof(Frag)) != 0) {
      ::txn_emu::fault(cudaErrorLaunchFailure,
                       "%s at %s:%d: fragment %s holds different values in lanes 0 and %d (lane-dependent use of "
                       "x[i] relies on the unspecified fragment layout)",
                       lanes[0]->what, lanes[0]->file, lanes[0]->line, which, l);
    }
  }
}

template <class Frag>
void resolve_load(::txn_emu::WarpOp* const* lanes, unsigned) {
  check_uniform_args(lanes);
  const auto* args = static_cast<const MemArgs*>(lanes[0]->in);
  using S = typename Frag::storage_element_type;
  const S* p = static_cast<const S*>(args->ptr);
  Frag f;
  for (int i = 0; i < Frag::num_elements; ++i) {
    const int t = Frag::tile_index(i), r = t / Frag::cols, c = t % Frag::cols;
    f.x[i] = args->row_major_mem ? p[static_cast<size_t>(r) * args->ldm + c] : p[static_cast<size_t>(c) * args->ldm + r];
  }
  for (int l = 0; l < 32; ++l) std::memcpy(lanes[l]->out, &f, sizeof(Frag));
}

template <class Frag>
void resolve_store(::txn_emu::WarpOp* const* lanes, unsigned) {
  check_uniform_args(lanes);
  const Frag* frags[32];
  for (int l = 0; l < 32; ++l) frags[l] = static_cast<const Frag*>(lanes[l]->out);
  check_uniform_fragment(lanes, frags, "to store");
  const auto* args = static_cast<const MemArgs*>(lanes[0]->in);
  using S = typename Frag::storage_element_type;
  S* p = static_cast<S*>(const_cast<void*>(args->ptr));
  for (int i = 0; i < Frag::num_elements; ++i) {
    const int t = Frag::tile_index(i), r = t / Frag::cols, c = t % Frag::cols;
    (args->row_major_mem ? p[static_cast<size_t>(r) * args->ldm + c] : p[static_cast<size_t>(c) * args->ldm + r]) =
        frags[0]->x[i];
  }
}

template <class Frag>
void check_memory_operand(const char* what, const void* p, unsigned ldm, const char* file, int line) {
  using S = typename Frag::storage_element_type;
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::txn_emu::fault(cudaErrorMisalignedAddress, "%s at %s:%d: pointer %p is not 32-byte (256-bit) aligned", what,
                     file, line, p);
  }
  if ((static_cast<size_t>(ldm) * sizeof(S)) % 16 != 0) {
    ::txn_emu::fault(cudaErrorLaunchFailure, "%s at %s:%d: ldm=%u is not a multiple of 16 bytes (%zu elements)", what,
                     file, line, ldm, 16 / sizeof(S));
  }
}

template <class Frag>
void load(const char* what, Frag& f, const void* p, unsigned ldm, bool row_major_mem, const char* file, int line) {
  check_memory_operand<Frag>(what, p, ldm, file, line);
  const MemArgs args{p, ldm, row_major_mem};
  ::txn_emu::WarpOp op{what, file, line, 0xffffffffu, &resolve_load<Frag>, 0, 0, 32, &args, &f};
  ::txn_emu::warp_sync(op);
}

template <class Frag>
void store(const char* what, void* p, const Frag& f, unsigned ldm, bool row_major_mem, const char* file, int line) {
  check_memory_operand<Frag>(what, p, ldm, file, line);
  const MemArgs args{p, ldm, row_major_mem};
  ::txn_emu::WarpOp op{what, file, line, 0xffffffffu, &resolve_store<Frag>, 0, 0, 32, &args, const_cast<Frag*>(&f)};
  ::txn_emu::warp_sync(op);
}

template <class FD, class FA, class FB, class FC>
struct MmaArgs {
  const FA* a;
  const FB* b;
  const FC* c;
};

template <class FD, class FA, class FB, class FC, bool kTf32>
void resolve_mma(::txn_emu::WarpOp* const* lanes, unsigned) {
  const FA* as[32];
  const FB* bs[32];
  const FC* cs[32];
  for (int l = 0; l < 32; ++l) {
    const auto* args = static_cast<const MmaArgs<FD, FA, FB, FC>*>(lanes[l]->in);
    as[l] = args->a;
    bs[l] = args->b;
    cs[l] = args->c;
  }
  check_uniform_fragment(lanes, as, "a");
  check_uniform_fragment(lanes, bs, "b");
  check_uniform_fragment(lanes, cs, "c");
  constexpr int M = FD::rows, N = FD::cols, K = FA::cols;
  float A[M][K], B[K][N], C[M][N];
  for (int i = 0; i < FA::num_elements; ++i) {
    const int t = FA::tile_index(i);
    const float v = to_f32(as[0]->x[i]);
    A[t / K][t % K] = kTf32 ? tf32_truncate(v) : v;
  }
  for (int i = 0; i < FB::num_elements; ++i) {
    const int t = FB::tile_index(i);
    const float v = to_f32(bs[0]->x[i]);
    B[t / N][t % N] = kTf32 ? tf32_truncate(v) : v;
  }
  for (int i = 0; i < FC::num_elements; ++i) {
    const int t = FC::tile_index(i);
    C[t / N][t % N] = to_f32(cs[0]->x[i]);
  }
  FD d;
  using SD = typename FD::storage_element_type;
  for (int i = 0; i < FD::num_elements; ++i) {
    const int t = FD::tile_index(i), r = t / N, c = t % N;
    float acc = C[r][c];
    for (int k = 0; k < K; ++k) acc = std::fma(A[r][k], B[k][c], acc);
    if constexpr (std::is_same_v<SD, float>) {
      d.x[i] = acc;
    } else {
      d.x[i] = __float2half_rn(acc);
    }
  }
  for (int l = 0; l < 32; ++l) std::memcpy(lanes[l]->out, &d, sizeof(FD));
}

}  // namespace detail

// load_matrix_sync for matrix_a / matrix_b (the layout is part of the fragment type)
template <class Use, int M, int N, int K, class T, class Layout,
          class = std::enable_if_t<!std::is_same_v<Use, accumulator>>>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                             const typename fragment<Use, M, N, K, T, Layout>::storage_element_type* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::load("wmma::load_matrix_sync", f, p, ldm, std::is_same_v<Layout, row_major>, file, line);
}

// load_matrix_sync for accumulators (the memory layout is an argument)
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::load("wmma::load_matrix_sync", f, p, ldm, layout == mem_row_major, file, line);
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::store("wmma::store_matrix_sync", p, f, ldm, layout == mem_row_major, file, line);
}

template <int M, int N, int K, class TD, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TD>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                     bool /*satf*/ = false, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(std::is_same_v<TA, TB>, "mma_sync: matrix_a and matrix_b must have the same element type");
  static_assert(std::is_same_v<TD, TC>, "mma_sync: the accumulators d and c must have the same type");
  static_assert(!std::is_same_v<TA, __nv_bfloat16> || std::is_same_v<TD, float>,
                "mma_sync: __nv_bfloat16 inputs need a float accumulator");
  using FD = fragment<accumulator, M, N, K, TD>;
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  const detail::MmaArgs<FD, FA, FB, FC> args{&a, &b, &c};
  ::txn_emu::WarpOp op{"wmma::mma_sync", file, line, 0xffffffffu,
                       &detail::resolve_mma<FD, FA, FB, FC, std::is_same_v<TA, precision::tf32>>,
                       0, 0, 32, &args, &d};
  ::txn_emu::warp_sync(op);
}

}  // namespace wmma
}  // namespace nvcuda
