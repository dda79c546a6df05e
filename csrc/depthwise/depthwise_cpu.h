// Depthwise KxK correlation on CPU (stride 1, zero padding K/2), forward and backward: the kernel family behind
// IDConv (one kernel per (b, c) plane) and the static dwconv2d (one kernel per channel, shared by the batch).
// T is float or double (callers convert float16 / bfloat16 to float).
//
// The input is first copied into a zero-padded window, so the hot loops have no bounds checks. Two window
// layouts, one vector of `lanes` outputs per position:
//   RowLayout    lanes along W (W rounded up to whole vectors), one plane at a time: planes whose rows fill the
//                vectors (14 columns or more with 16 lanes).
//   PackedLayout lanes across planes (plane l in lane l), `lanes` planes at a time: narrow planes, where a row
//                layout would leave most lanes idle (7 columns fill 7 of 16).
// Both are read as lines of output positions (see Lines in depthwise_cpu.cpp): a row layout's line is a column
// strip running down the plane, a packed layout's line is a row of the planes. A register tile holds kTile
// outputs of a line: the taps along the line are unrolled with their weights in registers, so one loaded input
// vector serves up to 7 outputs, and the taps across the line form the outer loop. The weight gradient uses the
// same tiling with the roles of weights and outputs swapped, summing into per-lane accumulators (Workspace::gw,
// gb) that row_grads / packed_grads reduce in a fixed order.
//
// The vector code (depthwise_cpu.cpp) is compiled per ISA level (cpu_simd.h); layouts and task splits are here.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace transxnet_ops::depthwise {

constexpr int64_t kTile = 7;  // outputs per register tile along a line (TransXNet's planes: 7, 14, 28, 56)

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Taps along a line are unrolled KA at a time: K itself up to 7, above that whichever of 7, 5, 3 wastes the
// fewest taps on zero padding (K = 9: 3 x 3).
inline int64_t tap_chunk(int64_t K) {
  if (K <= 7) return K;
  int64_t best = 7;
  for (int64_t ka : {5, 3})
    if (round_up(K, ka) < round_up(K, best)) best = ka;
  return best;
}

// Lanes along W. A window holds output rows [h0, h1) (a band of the plane): window row r is plane row
// h0 - pad + r, column c is plane column c - pad; zeros outside the plane. Rows are padded to whole tiles (plus
// the tap padding KAp - K), columns to whole vectors plus K - 1.
struct RowLayout {
  int64_t H, W, K, pad, KA, KAp, lanes;
  int64_t Wp;      // W rounded up to whole vectors
  int64_t stride;  // window row length
  int64_t band;    // output rows per band: a window of ~16K elements stays in L1/L2

  RowLayout(int64_t H_, int64_t W_, int64_t K_, int64_t lanes_)
      : H(H_), W(W_), K(K_), pad(K_ / 2), KA(tap_chunk(K_)), KAp(round_up(K_, KA)), lanes(lanes_) {
    Wp = round_up(W, lanes);
    stride = Wp + K - 1;
    band = std::min(H, std::max<int64_t>(kTile, (16384 / stride - KAp) / kTile * kTile));
  }
  int64_t window_rows(int64_t rows) const { return round_up(rows, kTile) + KAp - 1; }
};

// Lanes across planes: window element (r, c, l) at (r * cols + c) * lanes + l holds pixel (r - pad, c - pad) of
// plane l, zeros outside the planes. Whole planes; columns padded to whole tiles (plus the tap padding).
struct PackedLayout {
  int64_t H, W, K, pad, KA, KAp, lanes;
  int64_t Wt;    // W rounded up to whole tiles
  int64_t cols;  // window row length, in pixels

  PackedLayout(int64_t H_, int64_t W_, int64_t K_, int64_t lanes_)
      : H(H_), W(W_), K(K_), pad(K_ / 2), KA(tap_chunk(K_)), KAp(round_up(K_, KA)), lanes(lanes_) {
    Wt = round_up(W, kTile);
    cols = Wt + KAp - 1;
  }
};

// Planes narrower than a vector go packed (measured with 16 lanes: packed is 1.2x faster at W = 14, the row
// layout 1.05x at W = 28).
inline bool use_packed(int64_t W, int64_t lanes) { return W < lanes; }

// Per-thread buffers. gw / gb: the weight and bias gradient accumulators, K * KAp vectors and one vector, added
// to by backward_rows / backward_packed.
template <typename T>
struct Workspace {
  std::vector<T> x_win, gy_win, out, weights, gw, gb;
  void zero_grads(int64_t K, int64_t KAp, int64_t lanes) {
    gw.assign(K * KAp * lanes, T(0));
    gb.assign(lanes, T(0));
  }
};

// Elements of T in one vector at the ISA level the kernels run at (the `lanes` of the layouts).
template <typename T>
int64_t lanes_for();

// Inference-only maps fused into a forward: x read as x * scale + shift (an eval BatchNorm before the conv; the
// zero padding is applied after it, as the unfused modules do), and the output passed through the exact GELU.
// scale / shift: the first plane's entry (per plane; null: no affine map).
template <typename T>
struct ForwardMaps {
  const T* scale = nullptr;
  const T* shift = nullptr;
  bool gelu = false;
  ForwardMaps at(int64_t plane) const { return {scale ? scale + plane : nullptr, shift ? shift + plane : nullptr, gelu}; }
};

// Row layout, one plane (x, y: H x W). row_weights puts the K x K kernel k (rotated by 180 degrees if flip) into
// ws.weights. forward_rows writes output rows [h0, h1) of y = bias + x correlated with those weights (with maps).
// backward_rows, with flipped weights, writes gx and adds the weight and bias gradients to ws.gw / ws.gb;
// row_grads sums them over the lanes into gw (K x K) and *gb.
template <typename T>
void row_weights(const T* k, bool flip, const RowLayout& g, Workspace<T>& ws);
template <typename T>
void forward_rows(const T* x, T bias, T* y, int64_t h0, int64_t h1, const RowLayout& g, Workspace<T>& ws,
                  const ForwardMaps<T>& maps = {});
template <typename T>
void backward_rows(const T* gy, const T* x, T* gx, const RowLayout& g, Workspace<T>& ws);
template <typename T>
void row_grads(const RowLayout& g, const Workspace<T>& ws, T* gw, T* gb);

// Packed layout, n <= lanes consecutive planes; packed_weights takes their n consecutive K x K kernels; bias: n
// values or null. packed_grads reads plane l's accumulated gradients.
template <typename T>
void packed_weights(const T* k, int64_t n, bool flip, const PackedLayout& g, Workspace<T>& ws);
template <typename T>
void forward_packed(const T* x, int64_t n, const T* bias, T* y, const PackedLayout& g, Workspace<T>& ws,
                    const ForwardMaps<T>& maps = {});
template <typename T>
void backward_packed(const T* gy, const T* x, int64_t n, T* gx, const PackedLayout& g, Workspace<T>& ws);
template <typename T>
void packed_grads(const PackedLayout& g, const Workspace<T>& ws, int64_t l, T* gw, T* gb) {
  for (int64_t i = 0; i < g.K; ++i)
    for (int64_t j = 0; j < g.K; ++j) gw[i * g.K + j] = ws.gw[(i * g.KAp + j) * g.lanes + l];
  *gb = ws.gb[l];
}

// Runs body(begin, end) over [0, n) in parallel, in one contiguous chunk per thread of about equal total cost
// (cost(t) > 0). Which thread runs a task never changes its result: callers keep reductions inside a task.
template <typename Cost, typename Body>
void parallel_by_cost(int64_t n, Cost cost, const Body& body) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(n, at::get_num_threads());
  std::vector<double> prefix(n + 1, 0.0);
  for (int64_t t = 0; t < n; ++t) prefix[t + 1] = prefix[t] + static_cast<double>(cost(t));
  std::vector<int64_t> split(threads + 1, n);
  split[0] = 0;
  for (int64_t c = 1; c < threads; ++c) {
    const double target = prefix[n] * static_cast<double>(c) / static_cast<double>(threads);
    split[c] = std::lower_bound(prefix.begin(), prefix.end(), target) - prefix.begin();
    split[c] = std::clamp<int64_t>(split[c], split[c - 1], n);
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      if (split[c] < split[c + 1]) body(split[c], split[c + 1]);
  });
}

}  // namespace transxnet_ops::depthwise
