// 3 x 3 depthwise correlation on CPU (stride 1, zero padding 1), forward and backward, straight from and to the
// planes: the K = 3 member of the depthwise kernel family (depthwise_cpu.h) for planes at least half a vector wide
// (8 floats with AVX-512), used by IDConv and the static dwconv2d.
//
// With 9 taps per output, the general kernels' per-plane work (the zero-padded window copy, the partial vector at
// the right edge) costs about as much as the arithmetic. Here a plane is read in place as column strips one vector
// wide (the last strip ends at the plane's right edge, overlapping the one before when W is not a whole number of
// vectors). A register tile of output rows of a strip loads each input row once, as the vectors at columns c - 1,
// c, c + 1, and feeds up to three output rows from it (9 FMAs and 3.75 loads per output vector with AVX-512's 8-row
// tiles, against 9 + 9 for a tap-by-tap loop). The zero padding is implicit: rows outside the plane are skipped, and
// at the plane's left and right edges the shifted vectors are made by a lane shift of the centre vector that brings
// in a zero (no load outside the plane). The weight gradient walks the same strips (overlapping lanes masked out).
#pragma once
#include <cstdint>
#include <vector>

#include "depthwise/depthwise_cpu.h"

namespace transxnet_ops::depthwise {

// Planes at least this many columns wide take the strip kernels: half a vector of T at the running ISA level (a
// whole one at the baseline).
template <typename T>
int64_t strip3x3_min_width();

// Per-thread weight (9 vectors, row-major taps) and bias (1 vector) gradient accumulators of backward3x3.
template <typename T>
struct Grads3x3 {
  std::vector<T> acc;
  void zero();
};

// y = bias + x correlated with the 3 x 3 kernel k (row-major), with maps; x, y: H x W planes,
// W >= strip3x3_min_width<T>().
template <typename T>
void forward3x3(const T* x, const T* k, T bias, T* y, int64_t H, int64_t W, const ForwardMaps<T>& maps = {});

// gx = gy correlated with k rotated by 180 degrees; adds this plane's weight and bias gradients to g.
template <typename T>
void backward3x3(const T* gy, const T* x, const T* k, T* gx, int64_t H, int64_t W, Grads3x3<T>& g);

// g summed over the lanes (a fixed order): gw (3 x 3) and *gb.
template <typename T>
void grads3x3(const Grads3x3<T>& g, T* gw, T* gb);

}  // namespace transxnet_ops::depthwise
