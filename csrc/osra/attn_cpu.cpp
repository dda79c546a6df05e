// OSRA attention on CPU: out = softmax(scale * q k^T + bias) v, for small key sets (TransXNet: M = 49 keys).
//
// All M keys of a (b, h) fit in cache, so a tile of query rows is processed whole, without online rescaling: its
// scores (rows x Mp) live in a per-thread buffer, the softmax runs over full rows, and the forward saves the
// log-sum-exp. The backward recomputes the probabilities from it and, in one pass over a tile, writes grad_q and
// adds the tile's share of grad_k, grad_v and grad_bias.
//
// Every product is one register-blocked micro-kernel (mm_tile): C (RR x CV vectors) (+)= A (RR x Kc, scalars
// broadcast, any strides) * B (Kc x CV vectors). K and V of a (b, h) are staged once per call in the accumulation
// type (float for float/half/bfloat16, double for float64) in the two shapes the products read: k^T, v^T (D x Mp)
// for q k^T and dO v^T, and k, v (Mp x Dp) for p v and ds k; k pre-scaled. grad_k and grad_v are accumulated
// transposed (D x Mp: dk^T += q^T ds, dv^T += dO^T p), so every product streams whole vectors. Mp and Dp are M and
// D rounded up to whole vectors, zero padded; padded score columns hold -inf before the softmax and zero after.
// The vector code is compiled per ISA level (cpu_simd.h).
//
// Tasks. Forward: (b, h, block of query rows). Backward: (bias slice, block), a bias slice being the (b, h) pairs
// that share one (Bb, Hb) slice of the bias: the task loops over them in order, so grad_bias is summed over the
// broadcast batch/heads in the task's buffer and written once (no (B, H, N, M) buffer, no atomics). grad_k and
// grad_v get one partial per (b, h, block), summed over the blocks in order afterwards. Blocks depend on the shape
// only, so every result is bitwise the same for any thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_simd.h"
#include "osra/attn.h"

namespace transxnet_ops {
namespace {

using simd::lane_max;
using simd::lane_sum;
using simd::loadu;
using simd::splat;
using simd::storeu;
using simd::Vec;

constexpr int64_t kMaxLanes = 16;   // float with AVX-512
constexpr int64_t kBlockRows = 96;  // query rows per task

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Staged keys and values of one (b, h), and the padded sizes.
template <typename T>
struct KeyValues {
  const T *kT, *k, *vT, *v;  // kT, vT: D x Mp; k, v: Mp x Dp; k and kT times scale
  int64_t M, D, Mp, Dp;
};

// ------------------------------------------------------------------------------------------- vector code

// e^x for x <= 0 (scores minus the row maximum or the log-sum-exp). float: the Cephes expf polynomial (x = n ln2
// + r, |r| <= ln2/2; within 1.5 ulp) on whole vectors; below -87 the result is ~1e-38 instead of 0 (negligible next
// to the row's largest term, e^0 = 1). double keeps std::exp: float64 is for gradcheck.
template <typename V>
TXN_INLINE V exp_nonpositive(V x) {
  using T = simd::ElementOf<V>;
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t l = 0; l < simd::lanes_of<V>(); ++l) x[l] = std::exp(x[l]);
    return x;
  } else {
    using I = Vec<int32_t, sizeof(V)>;
    const V lo = splat<V>(-87.0f);
    x = x < lo ? lo : x;
    const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    const V n = (x * 1.44269504088896341f + magic) - magic;
    const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // x - n ln2, ln2 in two parts
    V p = splat<V>(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const I two_n = (__builtin_convertvector(n, I) + 127) << 23;  // 2^n, n in [-126, 0]
    return p * (V)two_n;
  }
}

// C[r][c] (+)= sum_{k < Kc} A[r * a_row + k * a_k] * B[k * b_row + c] for r < nr <= RR and c < CV vectors. Rows
// nr .. RR - 1 are computed from row nr - 1 and not stored.
template <typename V, int RR, int CV, typename T>
TXN_INLINE void mm_tile(const T* __restrict A, int64_t a_row, int64_t a_k, const T* __restrict B, int64_t b_row,
                        int64_t Kc, T* __restrict C, int64_t c_row, int64_t nr, bool accumulate) {
  constexpr int64_t L = simd::lanes_of<V>();
  const T* a[RR];
  V acc[RR][CV];
#pragma GCC unroll 24
  for (int r = 0; r < RR; ++r) {
    a[r] = A + std::min<int64_t>(r, nr - 1) * a_row;
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) acc[r][c] = accumulate && r < nr ? loadu<V>(C + r * c_row + c * L) : V{};
  }
  for (int64_t k = 0; k < Kc; ++k) {
    V b[CV];
#pragma GCC unroll 4
    for (int c = 0; c < CV; ++c) b[c] = loadu<V>(B + k * b_row + c * L);
#pragma GCC unroll 24
    for (int r = 0; r < RR; ++r) {
      const V ar = splat<V>(a[r][k * a_k]);
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c] += ar * b[c];
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < RR; ++r)
    if (r < nr)
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) storeu(C + r * c_row + c * L, acc[r][c]);
}

template <typename V, int RR, int CV, typename T>
TXN_INLINE void mm_rows(const T* A, int64_t a_row, int64_t a_k, const T* B, int64_t b_row, int64_t Kc, T* C,
                        int64_t c_row, int64_t rows, bool accumulate) {
  for (int64_t r0 = 0; r0 < rows; r0 += RR)
    mm_tile<V, RR, CV>(A + r0 * a_row, a_row, a_k, B, b_row, Kc, C + r0 * c_row, c_row,
                       std::min<int64_t>(RR, rows - r0), accumulate);
}

// C (rows x cols) (+)= A (rows x Kc) * B (Kc x cols); cols a multiple of the vector length. Register tiles of 4, 2
// or 1 vectors by 24 / CV rows (AVX-512: 32 registers) or 12 / CV rows.
template <typename V, typename T>
TXN_INLINE void matmul(const T* A, int64_t a_row, int64_t a_k, const T* B, int64_t b_row, int64_t Kc, T* C,
                       int64_t c_row, int64_t rows, int64_t cols, bool accumulate) {
  constexpr int64_t L = simd::lanes_of<V>();
  constexpr int kBudget = sizeof(V) == 64 ? 24 : 12;  // accumulator registers
  int64_t c0 = 0;
  for (; c0 + 4 * L <= cols; c0 += 4 * L)
    mm_rows<V, kBudget / 4, 4>(A, a_row, a_k, B + c0, b_row, Kc, C + c0, c_row, rows, accumulate);
  if (c0 + 2 * L <= cols) {
    mm_rows<V, kBudget / 2, 2>(A, a_row, a_k, B + c0, b_row, Kc, C + c0, c_row, rows, accumulate);
    c0 += 2 * L;
  }
  if (c0 < cols) mm_rows<V, kBudget, 1>(A, a_row, a_k, B + c0, b_row, Kc, C + c0, c_row, rows, accumulate);
}

// 1 for the key columns < M of the last score vector, 0 for its padding.
template <typename V, typename T>
TXN_INLINE V last_vector_keep(int64_t M, int64_t Mp) {
  constexpr int64_t L = simd::lanes_of<V>();
  T keep[L];
  for (int64_t l = 0; l < L; ++l) keep[l] = Mp - L + l < M ? T(1) : T(0);
  return loadu<V>(keep);
}

// Forward of one tile of nr query rows. In: q (nr x D), s (nr x Mp) holding the bias (-inf in the padding).
// Out: out (nr x Dp), lse (nr); s is overwritten with exp(s - row max).
template <typename T, int VB>
TXN_INLINE void forward_tile_impl(const KeyValues<T>& kv, const T* q, T* s, T* out, T* lse, int64_t nr) {
  using V = Vec<T, VB>;
  constexpr int64_t L = simd::lanes_of<V>();
  const int64_t Mp = kv.Mp, Dp = kv.Dp;
  matmul<V>(q, kv.D, 1, kv.kT, Mp, kv.D, s, Mp, nr, Mp, true);  // s += scale q k^T
  const V keep = last_vector_keep<V, T>(kv.M, Mp);
  T inv_sum[64];
  for (int64_t r = 0; r < nr; ++r) {
    T* sr = s + r * Mp;
    V mx = splat<V>(-std::numeric_limits<T>::infinity());
    for (int64_t m = 0; m < Mp; m += L) {
      const V v = loadu<V>(sr + m);
      mx = v > mx ? v : mx;
    }
    const V row_max = splat<V>(lane_max(mx));
    V sum = {};
    for (int64_t m = 0; m < Mp; m += L) {
      V p = exp_nonpositive(loadu<V>(sr + m) - row_max);
      if (m + L == Mp) p *= keep;
      storeu(sr + m, p);
      sum += p;
    }
    const T total = lane_sum(sum);
    inv_sum[r] = T(1) / total;
    lse[r] = row_max[0] + std::log(total);
  }
  matmul<V>(s, Mp, 1, kv.v, Dp, kv.M, out, Dp, nr, Dp, false);  // out = exp(s - max) v
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t d = 0; d < Dp; d += L) storeu(out + r * Dp + d, loadu<V>(out + r * Dp + d) * inv_sum[r]);
}

// Backward of one tile of nr query rows. In: q, dout (nr x D), lse (nr), p (nr x Mp) holding the bias (-inf in
// the padding). Out: dq (nr x Dp) = scale ds k; added to: dkT += q^T ds (without the scale), dvT += dO^T p (both
// D x Mp), and gbias (nr x Mp, if not null) += ds. Scratch: p, ds (nr x Mp).
// p is recomputed as exp(s - lse) and renormalised, and delta = sum_m p dp is summed from p and dp rather than
// taken as dO . O: both equal mathematically, but this way ds sums to zero over the row to rounding, which keeps
// the gradients accurate when the softmax is peaked (large |lse|, where float32 lse and O carry a relative error
// ~1e-6..1e-5).
template <typename T, int VB>
TXN_INLINE void backward_tile_impl(const KeyValues<T>& kv, const T* q, const T* dout, const T* lse, T* p, T* ds,
                                   T* dq, T* dkT, T* dvT, T* gbias, int64_t nr) {
  using V = Vec<T, VB>;
  constexpr int64_t L = simd::lanes_of<V>();
  const int64_t Mp = kv.Mp, Dp = kv.Dp, D = kv.D;
  matmul<V>(q, D, 1, kv.kT, Mp, D, p, Mp, nr, Mp, true);       // the forward's scores, recomputed
  matmul<V>(dout, D, 1, kv.vT, Mp, D, ds, Mp, nr, Mp, false);  // dp = dO v^T
  const V keep = last_vector_keep<V, T>(kv.M, Mp);
  for (int64_t r = 0; r < nr; ++r) {
    T *pr = p + r * Mp, *dsr = ds + r * Mp;
    const V row_lse = splat<V>(lse[r]);
    V sum = {};
    for (int64_t m = 0; m < Mp; m += L) {
      V e = exp_nonpositive(loadu<V>(pr + m) - row_lse);
      if (m + L == Mp) e *= keep;
      storeu(pr + m, e);
      sum += e;
    }
    const V inv = splat<V>(T(1) / lane_sum(sum));
    V delta = {};
    for (int64_t m = 0; m < Mp; m += L) {
      const V e = loadu<V>(pr + m) * inv;
      storeu(pr + m, e);
      delta += e * loadu<V>(dsr + m);
    }
    const V row_delta = splat<V>(lane_sum(delta));
    for (int64_t m = 0; m < Mp; m += L) storeu(dsr + m, loadu<V>(pr + m) * (loadu<V>(dsr + m) - row_delta));
    if (gbias)
      for (int64_t m = 0; m < Mp; m += L) storeu(gbias + r * Mp + m, loadu<V>(gbias + r * Mp + m) + loadu<V>(dsr + m));
  }
  matmul<V>(ds, Mp, 1, kv.k, Dp, kv.M, dq, Dp, nr, Dp, false);  // dq = scale ds k
  matmul<V>(q, 1, D, ds, Mp, nr, dkT, Mp, D, Mp, true);        // dk^T += q^T ds
  matmul<V>(dout, 1, D, p, Mp, nr, dvT, Mp, D, Mp, true);      // dv^T += dO^T p
}

TXN_DISPATCH_ISA(forward_tile, (const KeyValues<T>& kv, const T* q, T* s, T* out, T* lse, int64_t nr),
                 (kv, q, s, out, lse, nr))
TXN_DISPATCH_ISA(backward_tile,
                 (const KeyValues<T>& kv, const T* q, const T* dout, const T* lse, T* p, T* ds, T* dq, T* dkT,
                  T* dvT, T* gbias, int64_t nr),
                 (kv, q, dout, lse, p, ds, dq, dkT, dvT, gbias, nr))

// ------------------------------------------------------------------------------------------- plain C++

// Rows [0, rows) of a row-major (rows, n) matrix into a (rows, ld) tile in acc_t, `pad` in columns n .. ld - 1.
template <typename acc_t, typename scalar_t>
void load_tile(const scalar_t* src, int64_t rows, int64_t n, int64_t ld, acc_t* tile, acc_t pad = acc_t(0)) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t e = 0; e < n; ++e) tile[r * ld + e] = static_cast<acc_t>(src[r * n + e]);
    std::fill(tile + r * ld + n, tile + (r + 1) * ld, pad);
  }
}

// Rows [0, rows) of a (rows, ld) tile into a row-major (rows, n) matrix.
template <typename scalar_t, typename acc_t>
void store_tile(const acc_t* tile, int64_t rows, int64_t n, int64_t ld, scalar_t* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < n; ++e) dst[r * n + e] = static_cast<scalar_t>(tile[r * ld + e]);
}

struct Dims {
  int64_t B, H, N, M, D;
  int64_t Bb, Hb;      // bias batch/head sizes (1 = broadcast); B, H when there is no bias
  int64_t Mp, Dp;      // M, D rounded up to whole vectors
  int64_t tile_rows;   // query rows per tile: the score buffers stay in L1/L2
  int64_t blocks;      // blocks of kBlockRows query rows
  // offset of bias row (b, h, n)
  int64_t bias_row(int64_t b, int64_t h, int64_t n) const {
    return (((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * N + n) * M;
  }
};

template <typename acc_t>
Dims dims_of(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& bias) {
  const int64_t M = k.size(2), D = q.size(3), N = q.size(2), L = simd::vector_lanes<acc_t>();
  const int64_t Mp = round_up(M, L);
  return {q.size(0), q.size(1), N, M, D, bias ? bias->size(0) : q.size(0), bias ? bias->size(1) : q.size(1),
          Mp, round_up(D, L), std::clamp<int64_t>(32768 / Mp, 8, 48), (N + kBlockRows - 1) / kBlockRows};
}

// t (B, H, M, D), contiguous, in the accumulation type times `mul`, zero padded to (B * H, Mp, Dp), or transposed
// and padded to (B * H, Dp, Mp). Plain loops: a few thousand elements per (b, h), where ATen's pad / transpose /
// contiguous chain costs more than the attention itself at TransXNet's last stage.
template <typename acc_t, typename scalar_t>
at::Tensor stage(const at::Tensor& t, acc_t mul, bool transpose, const Dims& s) {
  const int64_t rows = transpose ? s.Dp : s.Mp, cols = transpose ? s.Mp : s.Dp, size = rows * cols;
  at::Tensor staged = at::empty({s.B * s.H, rows, cols}, t.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const scalar_t* src = t.const_data_ptr<scalar_t>();
  acc_t* dst = staged.mutable_data_ptr<acc_t>();
  at::parallel_for(0, s.B * s.H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      acc_t* d = dst + bh * size;
      const scalar_t* x = src + bh * s.M * s.D;
      std::fill(d, d + size, acc_t(0));
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t e = 0; e < s.D; ++e)
          d[transpose ? e * s.Mp + m : m * s.Dp + e] = static_cast<acc_t>(x[m * s.D + e]) * mul;
    }
  });
  return staged;
}

template <typename acc_t>
KeyValues<acc_t> key_values(const at::Tensor& kT, const at::Tensor& k, const at::Tensor& vT, const at::Tensor& v,
                            int64_t bh, const Dims& s) {
  const int64_t size = s.Mp * s.Dp;
  auto at_bh = [&](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() + bh * size : nullptr; };
  return {at_bh(kT), at_bh(k), at_bh(vT), at_bh(v), s.M, s.D, s.Mp, s.Dp};
}

// Per-thread buffers.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> q, dout, out, p, ds;
  explicit Scratch(const Dims& s)
      : q(s.tile_rows * s.D), dout(s.tile_rows * s.D), out(s.tile_rows * s.Dp), p(s.tile_rows * s.Mp),
        ds(s.tile_rows * s.Mp) {}
};

// Rows [row, row + rows) of a (., D) input in acc_t: the input itself when it has that type, else converted
// into buf.
template <typename acc_t, typename scalar_t>
const acc_t* rows_in_acc(const scalar_t* src, int64_t row, int64_t rows, int64_t D, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src + row * D;
  } else {
    load_tile(src + row * D, rows, D, D, buf.data());
    return buf.data();
  }
}

// The bias rows [n, n + rows) of (b, h) into a score tile (-inf in the padding; zeros without a bias).
template <typename acc_t, typename scalar_t>
void load_bias(const scalar_t* bias, int64_t b, int64_t h, int64_t n, int64_t rows, const Dims& s, acc_t* tile) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  if (bias) {
    load_tile(bias + s.bias_row(b, h, n), rows, s.M, s.Mp, tile, neg_inf);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(tile + r * s.Mp, tile + r * s.Mp + s.M, acc_t(0));
    std::fill(tile + r * s.Mp + s.M, tile + (r + 1) * s.Mp, neg_inf);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              const std::optional<at::Tensor>& bias, double scale) {
  auto out = at::empty_like(q, at::MemoryFormat::Contiguous);
  const auto acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc_dtype));
  if (out.numel() == 0 || k.size(2) == 0) {  // empty output, or no keys: the softmax of an empty row is undefined
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Dims s = dims_of<acc_t>(q, k, bias);
    const at::Tensor kT = stage<acc_t, scalar_t>(k, acc_t(scale), true, s);
    const at::Tensor vs = stage<acc_t, scalar_t>(v, acc_t(1), false, s);
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    acc_t* lp = lse.mutable_data_ptr<acc_t>();
    at::parallel_for(0, s.B * s.H * s.blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> t(s);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / s.blocks, b = bh / s.H, h = bh % s.H;
        const int64_t n0 = (task % s.blocks) * kBlockRows, n1 = std::min(s.N, n0 + kBlockRows);
        const KeyValues<acc_t> kv = key_values<acc_t>(kT, at::Tensor(), at::Tensor(), vs, bh, s);
        for (int64_t t0 = n0; t0 < n1; t0 += s.tile_rows) {
          const int64_t nr = std::min(s.tile_rows, n1 - t0), row = bh * s.N + t0;
          load_bias(bp, b, h, t0, nr, s, t.p.data());
          forward_tile(kv, rows_in_acc(qp, row, nr, s.D, t.q), t.p.data(), t.out.data(), lp + row, nr);
          store_tile(t.out.data(), nr, s.D, s.Dp, op + row * s.D);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> osra_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale,
    bool bias_requires_grad) {
  (void)out;  // not needed here: delta is summed from p and dp (see backward_tile_impl)
  const bool want_gbias = bias.has_value() && bias_requires_grad;
  auto grad_q = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto grad_bias = want_gbias ? at::empty_like(*bias, at::MemoryFormat::Contiguous) : at::empty({0}, q.options());
  if (q.numel() == 0 || k.size(2) == 0) {
    grad_q.zero_();
    if (want_gbias) grad_bias.zero_();
    return {grad_q, at::zeros_like(k), at::zeros_like(v), grad_bias};
  }
  at::Tensor grad_k, grad_v;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Dims s = dims_of<acc_t>(q, k, bias);
    // Without a bias gradient to sum, every (b, h) is a slice of its own.
    const int64_t slice_b = want_gbias ? s.Bb : s.B, slice_h = want_gbias ? s.Hb : s.H;
    const int64_t slices = slice_b * slice_h, pairs_per_slice = (s.B / slice_b) * (s.H / slice_h);
    const at::Tensor kT = stage<acc_t, scalar_t>(k, acc_t(scale), true, s);
    const at::Tensor ks = stage<acc_t, scalar_t>(k, acc_t(scale), false, s);
    const at::Tensor vT = stage<acc_t, scalar_t>(v, acc_t(1), true, s);
    // dk^T and dv^T partial sums, one per (b, h, block)
    auto part = at::empty({2, s.B * s.H, s.blocks, s.Dp, s.Mp}, kT.options());
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const acc_t* lp = lse.const_data_ptr<acc_t>();
    acc_t* dkT_part = part.mutable_data_ptr<acc_t>();
    acc_t* dvT_part = dkT_part + s.B * s.H * s.blocks * s.Dp * s.Mp;
    scalar_t* gqp = grad_q.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = want_gbias ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t part_size = s.Dp * s.Mp;

    at::parallel_for(0, slices * s.blocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<acc_t> t(s);
      std::vector<acc_t> gbias(gbp ? kBlockRows * s.Mp : 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t slice = task / s.blocks, block = task % s.blocks;
        const int64_t sb = slice / slice_h, sh = slice % slice_h;
        const int64_t n0 = block * kBlockRows, n1 = std::min(s.N, n0 + kBlockRows);
        std::fill(gbias.begin(), gbias.end(), acc_t(0));
        for (int64_t pair = 0; pair < pairs_per_slice; ++pair) {
          // the pair-th (b, h) broadcast onto this slice (b-major)
          const int64_t b = slice_b == 1 ? pair / (s.H / slice_h) : sb;
          const int64_t h = slice_h == 1 ? pair % s.H : sh;
          const int64_t bh = b * s.H + h;
          const KeyValues<acc_t> kv = key_values<acc_t>(kT, ks, vT, at::Tensor(), bh, s);
          acc_t* dkT = dkT_part + (bh * s.blocks + block) * part_size;
          acc_t* dvT = dvT_part + (bh * s.blocks + block) * part_size;
          std::fill(dkT, dkT + part_size, acc_t(0));
          std::fill(dvT, dvT + part_size, acc_t(0));
          for (int64_t t0 = n0; t0 < n1; t0 += s.tile_rows) {
            const int64_t nr = std::min(s.tile_rows, n1 - t0), row = bh * s.N + t0;
            load_bias(bp, b, h, t0, nr, s, t.p.data());
            backward_tile(kv, rows_in_acc(qp, row, nr, s.D, t.q), rows_in_acc(gop, row, nr, s.D, t.dout), lp + row,
                          t.p.data(), t.ds.data(), t.out.data(), dkT, dvT,
                          gbp ? gbias.data() + (t0 - n0) * s.Mp : nullptr, nr);
            store_tile(t.out.data(), nr, s.D, s.Dp, gqp + row * s.D);
          }
        }
        if (gbp) store_tile(gbias.data(), n1 - n0, s.M, s.Mp, gbp + (slice * s.N + n0) * s.M);
      }
    });
    // Sum the partials over the blocks in order, and write dk^T -> dk (times the scale), dv^T -> dv.
    auto reduce = [&](const acc_t* parts, acc_t mul) {
      auto grad = at::empty({s.B, s.H, s.M, s.D}, q.options());
      scalar_t* dst = grad.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.B * s.H, 4, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sum(part_size);
        for (int64_t bh = begin; bh < end; ++bh) {
          const acc_t* src = parts + bh * s.blocks * part_size;
          std::copy(src, src + part_size, sum.begin());
          for (int64_t blk = 1; blk < s.blocks; ++blk)
            for (int64_t e = 0; e < part_size; ++e) sum[e] += src[blk * part_size + e];
          scalar_t* g = dst + bh * s.M * s.D;
          for (int64_t m = 0; m < s.M; ++m)
            for (int64_t e = 0; e < s.D; ++e) g[m * s.D + e] = static_cast<scalar_t>(sum[e * s.Mp + m] * mul);
        }
      });
      return grad;
    };
    grad_k = reduce(dkT_part, acc_t(scale));
    grad_v = reduce(dvT_part, acc_t(1));
  });
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace transxnet_ops
