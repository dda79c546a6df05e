// OSRA attention on CPU, flash-style: out = softmax(scale * q k^T + bias) v.
//
// Query rows are processed in tiles of kTileRows rows; a tile's scores (kTileRows x M) live in a per-thread
// buffer only while the tile is processed, and backward recomputes them from the saved log-sum-exp, so no N x M
// matrix is ever allocated. Inside a tile every product is a small register-blocked matrix product (tile_matmul,
// tile_matmul_tn). K and V are staged once per call in the accumulation type (float for float/half/bfloat16,
// double for float64), pre-scaled, transposed where that makes the loops contiguous, and zero padded to whole
// registers; the tile functions are compiled for AVX-512 and AVX2 besides the build's baseline (TXN_SIMD_CLONES).
//
// Parallel tasks: forward, (b, h, block of query rows). Backward, (bias slice, block of query rows), where a bias
// slice is the set of (b, h) sharing one (Bb, Hb) slice of the bias: the task loops over those (b, h), so the
// bias gradient is summed over the broadcast batch/heads in a per-thread buffer and written once (no (B,H,N,M)
// buffer, no atomics). grad_q rows belong to one task; grad_k/grad_v get per-(b, h, row block) partial sums,
// reduced in a fixed order afterwards. Everything is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "osra/attn.h"

// torch extensions are built for the x86-64 baseline (SSE2); GCC also compiles these functions for newer CPUs
// and picks the best one when the library is loaded.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TXN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TXN_SIMD_CLONES
#endif
// Inlined into each clone, so compiled for that clone's instruction set.
#define TXN_INLINE inline __attribute__((always_inline))

namespace transxnet_ops {
namespace {

constexpr int64_t kTileRows = 8;  // query rows per tile: 8 independent FMA chains in tile_matmul
constexpr int64_t kCols = 16;     // columns per register block (one AVX-512 register of floats)

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// e^x for x <= 0 (scores minus the row maximum or the log-sum-exp). std::exp does not vectorize without
// -ffast-math, so float uses the Cephes expf polynomial (x = n ln2 + r, |r| <= ln2/2; within 1.5 ulp), which does.
// Below -87 the result is clamped to ~1e-38 instead of underflowing to 0 (negligible next to the row's largest
// term, e^0 = 1). Double keeps std::exp: float64 is for gradcheck, where accuracy matters more than speed.
TXN_INLINE float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2): 1.5*2^23 trick
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;             // x - n ln2, ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return p * two_n;
}
TXN_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// C[r][0:N] += sum_{kk < K} A[r][kk] * B[kk][0:N] for the kTileRows rows of a tile; N is a multiple of kCols and
// lda/ldb/ldc are row strides. Each kTileRows x kCols block of C stays in registers over the whole K loop.
template <typename T>
TXN_INLINE void tile_matmul(const T* __restrict A, int64_t lda, const T* __restrict B, int64_t ldb, T* __restrict C,
                            int64_t ldc, int64_t K, int64_t N) {
  for (int64_t n0 = 0; n0 < N; n0 += kCols) {
    T acc[kTileRows][kCols];
    for (int64_t r = 0; r < kTileRows; ++r)
      for (int64_t l = 0; l < kCols; ++l) acc[r][l] = C[r * ldc + n0 + l];
    for (int64_t kk = 0; kk < K; ++kk) {
      const T* b = B + kk * ldb + n0;
#pragma GCC unroll 8
      for (int64_t r = 0; r < kTileRows; ++r) {
        const T a = A[r * lda + kk];
#pragma omp simd
        for (int64_t l = 0; l < kCols; ++l) acc[r][l] += a * b[l];
      }
    }
    for (int64_t r = 0; r < kTileRows; ++r)
      for (int64_t l = 0; l < kCols; ++l) C[r * ldc + n0 + l] = acc[r][l];
  }
}

// C[kk][0:N] += sum_{r < rows} A[r][kk] * B[r][0:N] for kk < K: a tile's share of a product over all query rows
// (dk = ds^T q, dv = p^T dO), added to the caller's partial sums. K is a multiple of 4 and N of kCols; four rows
// of C at a time give independent FMA chains.
template <typename T>
TXN_INLINE void tile_matmul_tn(const T* __restrict A, int64_t lda, const T* __restrict B, int64_t ldb, int64_t rows,
                               T* __restrict C, int64_t ldc, int64_t K, int64_t N) {
  constexpr int64_t kC = 4;
  for (int64_t k0 = 0; k0 < K; k0 += kC) {
    for (int64_t n0 = 0; n0 < N; n0 += kCols) {
      T acc[kC][kCols];
      for (int64_t c = 0; c < kC; ++c)
        for (int64_t l = 0; l < kCols; ++l) acc[c][l] = C[(k0 + c) * ldc + n0 + l];
      for (int64_t r = 0; r < rows; ++r) {
        const T* b = B + r * ldb + n0;
        for (int64_t c = 0; c < kC; ++c) {
          const T a = A[r * lda + k0 + c];
#pragma omp simd
          for (int64_t l = 0; l < kCols; ++l) acc[c][l] += a * b[l];
        }
      }
      for (int64_t c = 0; c < kC; ++c)
        for (int64_t l = 0; l < kCols; ++l) C[(k0 + c) * ldc + n0 + l] = acc[c][l];
    }
  }
}

// K and V of one (b, h) staged in the accumulation type: kT (D, Mp) and k (M, Dp) times scale, v (M, Dp),
// vT (D, Mp); Mp and Dp are M and D rounded up to kCols, with zeros in the padding. Each pass stages what it reads.
template <typename T>
struct KeyValues {
  const T *kT, *k, *v, *vT;
  int64_t M, D, Mp, Dp;
};

// Forward of one tile. In: q (kTileRows, Dp), s (kTileRows, Mp) holding the bias (zeros without one).
// Out: out (kTileRows, Dp) and lse (kTileRows); s is overwritten.
template <typename T>
TXN_SIMD_CLONES void forward_tile(const KeyValues<T>& kv, const T* q, T* s, T* out, T* lse) {
  const int64_t M = kv.M, Mp = kv.Mp, Dp = kv.Dp;
  tile_matmul(q, Dp, kv.kT, Mp, s, Mp, kv.D, Mp);  // s = bias + scale * q k^T
  T inv_sum[kTileRows];
  for (int64_t r = 0; r < kTileRows; ++r) {  // s = exp(s - row max), zero in the padding
    T* sr = s + r * Mp;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t m = 0; m < M; ++m) mx = sr[m] > mx ? sr[m] : mx;  // (std::max does not vectorize here)
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t m = 0; m < M; ++m) {
      sr[m] = exp_nonpositive(sr[m] - mx);
      sum += sr[m];
    }
    std::fill(sr + M, sr + Mp, T(0));
    inv_sum[r] = T(1) / sum;
    lse[r] = mx + std::log(sum);
  }
  std::fill(out, out + kTileRows * Dp, T(0));
  tile_matmul(s, Mp, kv.v, Dp, out, Dp, M, Dp);  // out = exp(s - max) v
  for (int64_t r = 0; r < kTileRows; ++r)
    for (int64_t d = 0; d < Dp; ++d) out[r * Dp + d] *= inv_sum[r];
}

// Backward of one tile, of which the first `rows` rows are real. In: q, dout (kTileRows, Dp), their padding rows
// zero; lse (kTileRows); p (kTileRows, Mp) holding the bias (zeros without one). Out, with zeros in the padding:
// p = softmax probabilities; ds = p * (dp - delta) with dp = dO v^T and delta = sum_m p dp; dq (kTileRows, Dp)
// = scale * ds k; and dk += ds^T q (without the scale), dv += p^T dO, both (Mp, Dp).
// p is recomputed as exp(s - lse) and renormalised, and delta is summed from p and dp rather than taken as dO . O:
// both equal mathematically, but this way ds sums to zero over the row to rounding, which keeps the gradients
// accurate when the softmax is peaked (large |lse|, where float32 lse and O carry a relative error ~1e-6..1e-5).
template <typename T>
TXN_SIMD_CLONES void backward_tile(const KeyValues<T>& kv, const T* q, const T* dout, const T* lse, int64_t rows,
                                   T* p, T* ds, T* dq, T* dk, T* dv) {
  const int64_t M = kv.M, D = kv.D, Mp = kv.Mp, Dp = kv.Dp;
  tile_matmul(q, Dp, kv.kT, Mp, p, Mp, D, Mp);  // the forward's scores, recomputed
  std::fill(ds, ds + kTileRows * Mp, T(0));
  tile_matmul(dout, Dp, kv.vT, Mp, ds, Mp, D, Mp);  // dp = dO v^T
  for (int64_t r = 0; r < kTileRows; ++r) {
    T *pr = p + r * Mp, *dsr = ds + r * Mp;
    const T row_lse = lse[r];
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t m = 0; m < M; ++m) {
      pr[m] = exp_nonpositive(pr[m] - row_lse);
      sum += pr[m];
    }
    const T inv = T(1) / sum;
    T delta = 0;
#pragma omp simd reduction(+ : delta)
    for (int64_t m = 0; m < M; ++m) {
      pr[m] *= inv;
      delta += pr[m] * dsr[m];
    }
#pragma omp simd
    for (int64_t m = 0; m < M; ++m) dsr[m] = pr[m] * (dsr[m] - delta);
    std::fill(pr + M, pr + Mp, T(0));
    std::fill(dsr + M, dsr + Mp, T(0));
  }
  std::fill(dq, dq + kTileRows * Dp, T(0));
  tile_matmul(ds, Mp, kv.k, Dp, dq, Dp, M, Dp);
  tile_matmul_tn(ds, Mp, q, Dp, rows, dk, Dp, Mp, Dp);
  tile_matmul_tn(p, Mp, dout, Dp, rows, dv, Dp, Mp, Dp);
}

// Rows [0, rows) of a row-major (rows, n) matrix into a (kTileRows, ld) tile in acc_t, zeros elsewhere.
template <typename acc_t, typename scalar_t>
void load_tile(const scalar_t* src, int64_t rows, int64_t n, int64_t ld, acc_t* tile) {
  std::fill(tile, tile + kTileRows * ld, acc_t(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < n; ++e) tile[r * ld + e] = static_cast<acc_t>(src[r * n + e]);
}

// Rows [0, rows) of a (kTileRows, ld) tile into a row-major (rows, n) matrix.
template <typename scalar_t, typename acc_t>
void store_tile(const acc_t* tile, int64_t rows, int64_t n, int64_t ld, scalar_t* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t e = 0; e < n; ++e) dst[r * n + e] = static_cast<scalar_t>(tile[r * ld + e]);
}

struct Dims {
  int64_t B, H, N, M, D;
  int64_t Bb, Hb;  // bias batch/head sizes (1 = broadcast); B, H when there is no bias
  int64_t Mp, Dp;  // M, D rounded up to kCols
  // offset of bias row (b, h, n)
  int64_t bias_row(int64_t b, int64_t h, int64_t n) const {
    return (((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * N + n) * M;
  }
};

Dims dims_of(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& bias) {
  const int64_t M = k.size(2), D = q.size(3);
  return {q.size(0), q.size(1), q.size(2), M, D, bias ? bias->size(0) : q.size(0),
          bias ? bias->size(1) : q.size(1), round_up(M, kCols), round_up(D, kCols)};
}

// t (B, H, M, D) in the accumulation type times `mul`, zero padded to (B, H, M, Dp), or transposed and padded
// to (B, H, D, Mp); contiguous.
at::Tensor stage(const at::Tensor& t, double mul, bool transpose, const Dims& s) {
  at::Tensor a = t.to(t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  if (mul != 1.0) a = a * mul;
  if (transpose) return at::constant_pad_nd(a.transpose(2, 3), {0, s.Mp - s.M}).contiguous();
  return at::constant_pad_nd(a, {0, s.Dp - s.D}).contiguous();
}

// Query rows per task: enough tasks for the thread pool (`outer` independent units besides row blocks), at
// least 16 rows each.
int64_t rows_per_task(int64_t outer, int64_t N) {
  const int64_t want_tasks = 4 * at::get_num_threads();
  const int64_t blocks = std::max<int64_t>(1, (want_tasks + outer - 1) / outer);
  return std::max<int64_t>(16, (N + blocks - 1) / blocks);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              const std::optional<at::Tensor>& bias, double scale) {
  const Dims s = dims_of(q, k, bias);
  auto out = at::empty_like(q, at::MemoryFormat::Contiguous);
  const auto acc_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto lse = at::empty({s.B, s.H, s.N}, q.options().dtype(acc_dtype));
  if (out.numel() == 0 || s.M == 0) {  // empty output, or no keys: the softmax of an empty row is undefined
    out.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  const at::Tensor kT = stage(k, scale, true, s), vs = stage(v, 1.0, false, s);
  const int64_t rows = rows_per_task(s.B * s.H, s.N), blocks = (s.N + rows - 1) / rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const acc_t* kTp = kT.const_data_ptr<acc_t>();
    const acc_t* vp = vs.const_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    acc_t* lp = lse.mutable_data_ptr<acc_t>();
    at::parallel_for(0, s.B * s.H * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> q_t(kTileRows * s.Dp), s_t(kTileRows * s.Mp), o_t(kTileRows * s.Dp);
      acc_t lse_t[kTileRows];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / blocks, b = bh / s.H, h = bh % s.H;
        const int64_t n0 = (task % blocks) * rows, n1 = std::min(s.N, n0 + rows);
        const KeyValues<acc_t> kv{kTp + bh * s.D * s.Mp, nullptr, vp + bh * s.M * s.Dp, nullptr,
                                  s.M, s.D, s.Mp, s.Dp};
        for (int64_t t0 = n0; t0 < n1; t0 += kTileRows) {
          const int64_t nr = std::min(kTileRows, n1 - t0), row = bh * s.N + t0;
          load_tile(qp + row * s.D, nr, s.D, s.Dp, q_t.data());
          if (bp) {
            load_tile(bp + s.bias_row(b, h, t0), nr, s.M, s.Mp, s_t.data());
          } else {
            std::fill(s_t.begin(), s_t.end(), acc_t(0));
          }
          forward_tile(kv, q_t.data(), s_t.data(), o_t.data(), lse_t);
          store_tile(o_t.data(), nr, s.D, s.Dp, op + row * s.D);
          std::copy(lse_t, lse_t + nr, lp + row);
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
  (void)out;  // not needed here: delta is summed from p and dp (see backward_tile)
  const bool want_gbias = bias.has_value() && bias_requires_grad;
  const Dims s = dims_of(q, k, bias);
  // Without a bias gradient to sum, every (b, h) is a slice of its own.
  const int64_t slice_b = want_gbias ? s.Bb : s.B, slice_h = want_gbias ? s.Hb : s.H;
  const int64_t slices = slice_b * slice_h;
  const int64_t pairs_per_slice = (s.B / slice_b) * (s.H / slice_h);

  auto grad_q = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto grad_bias = want_gbias ? at::empty_like(*bias, at::MemoryFormat::Contiguous) : at::empty({0}, q.options());
  if (q.numel() == 0 || s.M == 0) {
    grad_q.zero_();
    if (want_gbias) grad_bias.zero_();
    return {grad_q, at::zeros_like(k), at::zeros_like(v), grad_bias};
  }

  int64_t rows = rows_per_task(slices, s.N);
  // Bound the dk/dv partial sums (B*H*blocks*Mp*Dp each) to ~16M elements.
  while (rows < s.N && s.B * s.H * ((s.N + rows - 1) / rows) * s.Mp * s.Dp > (int64_t(1) << 24)) rows *= 2;
  const int64_t blocks = (s.N + rows - 1) / rows;
  // Rows whose bias-gradient sums are held at once while looping over the slice's (b, h).
  const int64_t sub_rows = std::min<int64_t>(rows, 4 * kTileRows);

  const at::Tensor kT = stage(k, scale, true, s), ks = stage(k, scale, false, s), vT = stage(v, 1.0, true, s);
  auto dk_part = at::zeros({s.B * s.H, blocks, s.Mp, s.Dp}, kT.options());
  auto dv_part = at::zeros_like(dk_part);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const acc_t* lp = lse.const_data_ptr<acc_t>();
    const acc_t *kTp = kT.const_data_ptr<acc_t>(), *kp = ks.const_data_ptr<acc_t>(), *vTp = vT.const_data_ptr<acc_t>();
    acc_t* dkp = dk_part.mutable_data_ptr<acc_t>();
    acc_t* dvp = dv_part.mutable_data_ptr<acc_t>();
    scalar_t* gqp = grad_q.mutable_data_ptr<scalar_t>();
    scalar_t* gbp = want_gbias ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t MDp = s.M * s.Dp, DMp = s.D * s.Mp, MpDp = s.Mp * s.Dp;

    at::parallel_for(0, slices * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> q_t(kTileRows * s.Dp), do_t(kTileRows * s.Dp), dq_t(kTileRows * s.Dp),
          p_t(kTileRows * s.Mp), ds_t(kTileRows * s.Mp), gbias(sub_rows * s.M);
      acc_t lse_t[kTileRows];
      for (int64_t task = begin; task < end; ++task) {
        const int64_t slice = task / blocks, block = task % blocks;
        const int64_t sb = slice / slice_h, sh = slice % slice_h;
        const int64_t n0 = block * rows, n1 = std::min(s.N, n0 + rows);
        for (int64_t a = n0; a < n1; a += sub_rows) {
          const int64_t z = std::min(n1, a + sub_rows);
          std::fill(gbias.begin(), gbias.end(), acc_t(0));
          for (int64_t pair = 0; pair < pairs_per_slice; ++pair) {
            // the pair-th (b, h) broadcast onto this slice (b-major)
            const int64_t b = slice_b == 1 ? pair / (s.H / slice_h) : sb;
            const int64_t h = slice_h == 1 ? pair % s.H : sh;
            const int64_t bh = b * s.H + h;
            const KeyValues<acc_t> kv{kTp + bh * DMp, kp + bh * MDp, nullptr, vTp + bh * DMp, s.M, s.D, s.Mp, s.Dp};
            acc_t* dk = dkp + (bh * blocks + block) * MpDp;
            acc_t* dv = dvp + (bh * blocks + block) * MpDp;
            for (int64_t t0 = a; t0 < z; t0 += kTileRows) {
              const int64_t nr = std::min(kTileRows, z - t0), row = bh * s.N + t0;
              load_tile(qp + row * s.D, nr, s.D, s.Dp, q_t.data());
              load_tile(gop + row * s.D, nr, s.D, s.Dp, do_t.data());
              for (int64_t r = 0; r < kTileRows; ++r) lse_t[r] = r < nr ? lp[row + r] : acc_t(0);
              if (bp) {
                load_tile(bp + s.bias_row(b, h, t0), nr, s.M, s.Mp, p_t.data());
              } else {
                std::fill(p_t.begin(), p_t.end(), acc_t(0));
              }
              backward_tile(kv, q_t.data(), do_t.data(), lse_t, nr, p_t.data(), ds_t.data(), dq_t.data(), dk, dv);
              store_tile(dq_t.data(), nr, s.D, s.Dp, gqp + row * s.D);
              if (gbp) {
                for (int64_t r = 0; r < nr; ++r) {
                  acc_t* gb = gbias.data() + (t0 - a + r) * s.M;
                  for (int64_t m = 0; m < s.M; ++m) gb[m] += ds_t[r * s.Mp + m];
                }
              }
            }
          }
          if (gbp) store_tile(gbias.data(), z - a, s.M, s.M, gbp + (slice * s.N + a) * s.M);
        }
      }
    });
  });
  // Fixed-order reduction of the per-block partial sums; the scale of dk is applied once here.
  auto reduce = [&](const at::Tensor& part, double mul) {
    return part.sum(1).narrow(1, 0, s.M).narrow(2, 0, s.D).mul(mul).to(q.scalar_type()).reshape(k.sizes());
  };
  return {grad_q, reduce(dk_part, scale), reduce(dv_part, 1.0), grad_bias};
}

}  // namespace transxnet_ops
