// Vector code for the CPU kernels: GCC/Clang vector extensions, compiled for several x86 ISA levels and picked
// at run time.
//
// torch extensions are built for the x86-64 baseline (SSE2). A kernel is written once as an always-inline template
// on the vector width in bytes (Vec<T, VB>: one register at the ISA level it is compiled for) and instantiated in
// three entry points: AVX-512 (x86-64-v4, VB = 64), AVX2 + FMA (x86-64-v3, VB = 32) and the baseline (VB = 16,
// also the only one on other architectures). Unlike target_clones, the register blocking fits each ISA's
// register file, and every variant can be tested on one machine: TRANSXNET_CPU_ISA=avx2|baseline caps the level.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

// A 64-byte vector passed between inlined functions triggers ABI notes for the narrower targets; no vector ever
// crosses a real call.
#pragma GCC diagnostic ignored "-Wpsabi"

// Inlined into each ISA variant, so compiled for that variant's instruction set.
#define TXN_INLINE inline __attribute__((always_inline))
// The same for a lambda inside a kernel (after its parameter list): a lambda left out of line would be compiled
// for the baseline ISA, 4x slower or worse.
#define TXN_INLINE_LAMBDA __attribute__((always_inline))

#if defined(__GNUC__) && defined(__x86_64__)
#define TXN_X86 1
#define TXN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi2,f16c")))
#define TXN_TARGET_AVX2 __attribute__((target("avx2,fma,bmi2,f16c")))
#else
#define TXN_X86 0
#define TXN_TARGET_AVX512
#define TXN_TARGET_AVX2
#endif

namespace transxnet_ops::simd {

template <typename T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
  // The same vector at any element-aligned address. An access through it is an access of T for alias analysis
  // (unlike memcpy, which may alias anything and makes the compiler reload every other value after a store).
  typedef T unaligned __attribute__((vector_size(Bytes), aligned(sizeof(T))));
};
// Bytes / sizeof(T) lanes of T.
template <typename T, int Bytes>
using Vec = typename VecOf<T, Bytes>::type;

template <typename V>
constexpr int64_t lanes_of() {
  return sizeof(V) / sizeof(V{}[0]);
}

template <typename V, typename T>
TXN_INLINE V loadu(const T* p) {
  return *reinterpret_cast<const typename VecOf<T, sizeof(V)>::unaligned*>(p);
}

template <typename V, typename T>
TXN_INLINE void storeu(T* p, const V& v) {
  *reinterpret_cast<typename VecOf<T, sizeof(V)>::unaligned*>(p) = v;
}


template <typename V>
using ElementOf = std::remove_cv_t<std::remove_reference_t<decltype(V{}[0])>>;

// Half of V (down to a scalar).
template <typename V>
using HalfOf = std::conditional_t<sizeof(V) == 2 * sizeof(ElementOf<V>), ElementOf<V>,
                                  Vec<ElementOf<V>, sizeof(V) / 2>>;

template <typename V>
TXN_INLINE void split_halves(const V& v, HalfOf<V>& lo, HalfOf<V>& hi) {
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
}

template <typename V, typename T>
TXN_INLINE V splat(T x) {
  return V{} + x;
}

// Sum of the lanes, halving the vector (a fixed order).
template <typename V>
TXN_INLINE ElementOf<V> lane_sum(const V& v) {
  HalfOf<V> lo, hi;
  split_halves(v, lo, hi);
  if constexpr (std::is_arithmetic_v<HalfOf<V>>) {
    return lo + hi;
  } else {
    return lane_sum(lo + hi);
  }
}

// Largest lane.
template <typename V>
TXN_INLINE ElementOf<V> lane_max(const V& v) {
  HalfOf<V> lo, hi;
  split_halves(v, lo, hi);
  if constexpr (std::is_arithmetic_v<HalfOf<V>>) {
    return lo > hi ? lo : hi;
  } else {
    return lane_max(lo > hi ? lo : hi);
  }
}

namespace detail {
template <typename V, int d, bool hi, size_t... J>
TXN_INLINE V transpose_shuffle(const V& a, const V& b, std::index_sequence<J...>) {
  constexpr int L = lanes_of<V>();
  if constexpr (hi) {
    return __builtin_shufflevector(a, b, ((int(J) & d) ? L + int(J) : int(J) + d)...);
  } else {
    return __builtin_shufflevector(a, b, ((int(J) & d) ? L + int(J) - d : int(J))...);
  }
}

// Swaps the off-diagonal d x d blocks of every 2d x 2d block, then recurses on d / 2.
template <typename V, int d>
TXN_INLINE void transpose_stage(V* r) {
  constexpr int L = lanes_of<V>();
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if ((i & d) == 0) {
      const V lo = transpose_shuffle<V, d, false>(r[i], r[i + d], std::make_index_sequence<L>{});
      const V hi = transpose_shuffle<V, d, true>(r[i], r[i + d], std::make_index_sequence<L>{});
      r[i] = lo;
      r[i + d] = hi;
    }
  }
  if constexpr (d > 1) transpose_stage<V, d / 2>(r);
}
}  // namespace detail

// Transposes the lanes x lanes matrix whose rows are r[0 .. lanes): log2(lanes) rounds of two-vector shuffles.
template <typename V>
TXN_INLINE void transpose(V* r) {
  detail::transpose_stage<V, lanes_of<V>() / 2>(r);
}

enum class Isa { kBaseline = 16, kAvx2 = 32, kAvx512 = 64 };  // value: vector bytes

inline Isa detect_isa() {
#if TXN_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  Isa isa = avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kBaseline;
#else
  Isa isa = Isa::kBaseline;
#endif
  if (const char* cap = std::getenv("TRANSXNET_CPU_ISA")) {  // lower only: a cap above the CPU would crash
    if (std::strcmp(cap, "baseline") == 0) isa = Isa::kBaseline;
    if (std::strcmp(cap, "avx2") == 0 && isa == Isa::kAvx512) isa = Isa::kAvx2;
  }
  return isa;
}

// The ISA level the kernels run at, read once per process.
inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// Elements of T in one vector register at cpu_isa().
template <typename T>
int64_t vector_lanes() {
  return static_cast<int64_t>(cpu_isa()) / static_cast<int64_t>(sizeof(T));
}

}  // namespace transxnet_ops::simd

// Defines `template <typename T> void name(params)` that runs name##_impl<T, VB>(args) compiled for cpu_isa().
// name##_impl must be an always-inline template <typename T, int VB>.
#define TXN_DISPATCH_ISA(name, params, args)                                                                        \
  template <typename T>                                                                                              \
  TXN_TARGET_AVX512 void name##_avx512 params { name##_impl<T, 64> args; }                                          \
  template <typename T>                                                                                              \
  TXN_TARGET_AVX2 void name##_avx2 params { name##_impl<T, 32> args; }                                              \
  template <typename T>                                                                                              \
  void name##_baseline params { name##_impl<T, 16> args; }                                                           \
  template <typename T>                                                                                              \
  void name params {                                                                                                 \
    switch (::transxnet_ops::simd::cpu_isa()) {                                                                      \
      case ::transxnet_ops::simd::Isa::kAvx512: return name##_avx512<T> args;                                        \
      case ::transxnet_ops::simd::Isa::kAvx2: return name##_avx2<T> args;                                            \
      default: return name##_baseline<T> args;                                                                       \
    }                                                                                                                \
  }
