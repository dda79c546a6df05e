// OSRA attention on CPU, flash-style: each query row's scores live in an M-length buffer only while that row
// is processed; backward recomputes them from the saved log-sum-exp. No N x M matrix is ever allocated.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "osra/attn.h"

namespace transxnet_ops {
namespace {

struct Dims {
  int64_t B, H, N, M, D, Bb, Hb;
  // offset of bias row (b, h, n); bias is broadcast over batch/heads when Bb/Hb == 1
  int64_t bias_row(int64_t b, int64_t h, int64_t n) const {
    return (((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * N + n) * M;
  }
};

template <typename scalar_t, typename acc_t>
inline acc_t dot(const scalar_t* a, const scalar_t* b, int64_t D) {
  acc_t s = 0;
  for (int64_t d = 0; d < D; ++d) s += static_cast<acc_t>(a[d]) * static_cast<acc_t>(b[d]);
  return s;
}

// scores[m] = scale * q . k[m] + bias[m] for one query row.
template <typename scalar_t, typename acc_t>
void score_row(const scalar_t* q, const scalar_t* k, const scalar_t* bias_row, acc_t scale, const Dims& s,
               acc_t* scores) {
  for (int64_t m = 0; m < s.M; ++m) {
    scores[m] = scale * dot<scalar_t, acc_t>(q, k + m * s.D, s.D);
    if (bias_row) scores[m] += static_cast<acc_t>(bias_row[m]);
  }
}

// Rows per task: enough tasks for the thread pool, at least 16 rows each.
int64_t rows_per_chunk(int64_t outer, int64_t N) {
  const int64_t want_tasks = 4 * at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, (want_tasks + outer - 1) / outer);
  return std::max<int64_t>(16, (N + chunks - 1) / chunks);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> osra_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              const std::optional<at::Tensor>& bias, double scale) {
  const Dims s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
               bias ? bias->size(0) : 1, bias ? bias->size(1) : 1};
  auto out = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto lse = at::empty({s.B, s.H, s.N}, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  const int64_t rows = rows_per_chunk(s.B * s.H, s.N);
  const int64_t chunks = (s.N + rows - 1) / rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    acc_t* lp = lse.data_ptr<acc_t>();
    at::parallel_for(0, s.B * s.H * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scores(s.M), acc(s.D);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / chunks, b = bh / s.H, h = bh % s.H;
        const int64_t n0 = (task % chunks) * rows, n1 = std::min(s.N, n0 + rows);
        const scalar_t* kb = kp + bh * s.M * s.D;
        const scalar_t* vb = vp + bh * s.M * s.D;
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t row = bh * s.N + n;
          score_row<scalar_t, acc_t>(qp + row * s.D, kb, bp ? bp + s.bias_row(b, h, n) : nullptr,
                                     static_cast<acc_t>(scale), s, scores.data());
          const acc_t mx = *std::max_element(scores.begin(), scores.end());
          acc_t sum = 0;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t m = 0; m < s.M; ++m) {
            const acc_t p = std::exp(scores[m] - mx);
            sum += p;
            for (int64_t d = 0; d < s.D; ++d) acc[d] += p * static_cast<acc_t>(vb[m * s.D + d]);
          }
          for (int64_t d = 0; d < s.D; ++d) op[row * s.D + d] = static_cast<scalar_t>(acc[d] / sum);
          lp[row] = mx + std::log(sum);
        }
      }
    });
  });
  return {out, lse};
}

// Backward. Tasks are (bias slice, chunk of query rows); a task loops over the (b, h) pairs that share its bias
// slice, so grad_bias rows are summed over the broadcast batch/heads in registers and written once (no
// (B,H,N,M) buffer, no atomics). grad_q rows are owned by one task; grad_k/grad_v get per-(b, h, chunk)
// partial sums, reduced in chunk order in a second pass (deterministic).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> osra_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& bias, const at::Tensor& out, const at::Tensor& lse, double scale,
    bool bias_requires_grad) {
  const bool has_bias = bias.has_value();
  const bool want_gbias = has_bias && bias_requires_grad;
  // With no bias, every (b, h) is its own slice.
  const Dims s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3),
               has_bias ? bias->size(0) : q.size(0), has_bias ? bias->size(1) : q.size(1)};
  const int64_t slices = s.Bb * s.Hb;
  const int64_t pairs_per_slice = (s.B / s.Bb) * (s.H / s.Hb);
  int64_t rows = rows_per_chunk(slices, s.N);
  // Bound the partial-sum buffers to ~64 MB each.
  const int64_t budget = int64_t(1) << 24;
  while (rows < s.N && s.B * s.H * ((s.N + rows - 1) / rows) * s.M * s.D > budget) rows *= 2;
  const int64_t chunks = (s.N + rows - 1) / rows;

  auto grad_q = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto grad_k = at::empty_like(k, at::MemoryFormat::Contiguous);
  auto grad_v = at::empty_like(v, at::MemoryFormat::Contiguous);
  auto grad_bias = want_gbias ? at::empty_like(*bias, at::MemoryFormat::Contiguous) : at::empty({0}, q.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "osra_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t sc = static_cast<acc_t>(scale);
    const scalar_t *qp = q.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>();
    const scalar_t *gop = grad_out.data_ptr<scalar_t>(), *op = out.data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? bias->data_ptr<scalar_t>() : nullptr;
    const acc_t* lp = lse.data_ptr<acc_t>();
    scalar_t* gqp = grad_q.data_ptr<scalar_t>();
    scalar_t* gbp = want_gbias ? grad_bias.data_ptr<scalar_t>() : nullptr;
    std::vector<acc_t> dk_part(s.B * s.H * chunks * s.M * s.D), dv_part(dk_part.size());

    at::parallel_for(0, slices * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> p(s.M), ds(s.M), gbias_row(s.M), dq(s.D);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t slice = task / chunks, chunk = task % chunks;
        const int64_t bb = slice / s.Hb, hb = slice % s.Hb;
        const int64_t n0 = chunk * rows, n1 = std::min(s.N, n0 + rows);
        for (int64_t n = n0; n < n1; ++n) {
          std::fill(gbias_row.begin(), gbias_row.end(), acc_t(0));
          for (int64_t pair = 0; pair < pairs_per_slice; ++pair) {
            // (b, h) pairs broadcasting onto this slice
            const int64_t b = s.Bb == 1 ? pair / (s.H / s.Hb) : bb;
            const int64_t h = s.Hb == 1 ? pair % s.H : hb;
            const int64_t bh = b * s.H + h, row = bh * s.N + n;
            const scalar_t *kb = kp + bh * s.M * s.D, *vb = vp + bh * s.M * s.D;
            const scalar_t *qr = qp + row * s.D, *gor = gop + row * s.D;
            score_row<scalar_t, acc_t>(qr, kb, bp ? bp + s.bias_row(b, h, n) : nullptr, sc, s, p.data());
            const acc_t row_lse = lp[row];
            const acc_t delta = dot<scalar_t, acc_t>(gor, op + row * s.D, s.D);
            std::fill(dq.begin(), dq.end(), acc_t(0));
            acc_t* dkp = dk_part.data() + (bh * chunks + chunk) * s.M * s.D;
            acc_t* dvp = dv_part.data() + (bh * chunks + chunk) * s.M * s.D;
            for (int64_t m = 0; m < s.M; ++m) {
              p[m] = std::exp(p[m] - row_lse);
              ds[m] = p[m] * (dot<scalar_t, acc_t>(gor, vb + m * s.D, s.D) - delta);
              gbias_row[m] += ds[m];
              for (int64_t d = 0; d < s.D; ++d) {
                dq[d] += ds[m] * static_cast<acc_t>(kb[m * s.D + d]);
                dkp[m * s.D + d] += ds[m] * static_cast<acc_t>(qr[d]);
                dvp[m * s.D + d] += p[m] * static_cast<acc_t>(gor[d]);
              }
            }
            for (int64_t d = 0; d < s.D; ++d) gqp[row * s.D + d] = static_cast<scalar_t>(sc * dq[d]);
          }
          if (gbp) {
            scalar_t* dst = gbp + (slice * s.N + n) * s.M;
            for (int64_t m = 0; m < s.M; ++m) dst[m] = static_cast<scalar_t>(gbias_row[m]);
          }
        }
      }
    });

    // grad_k = scale * sum over chunks, grad_v = sum over chunks (fixed order).
    scalar_t *gkp = grad_k.data_ptr<scalar_t>(), *gvp = grad_v.data_ptr<scalar_t>();
    const int64_t MD = s.M * s.D;
    at::parallel_for(0, s.B * s.H * MD, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t bh = idx / MD, e = idx % MD;
        acc_t dk = 0, dv = 0;
        for (int64_t c = 0; c < chunks; ++c) {
          dk += dk_part[(bh * chunks + c) * MD + e];
          dv += dv_part[(bh * chunks + c) * MD + e];
        }
        gkp[idx] = static_cast<scalar_t>(sc * dk);
        gvp[idx] = static_cast<scalar_t>(dv);
      }
    });
  });
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace transxnet_ops
