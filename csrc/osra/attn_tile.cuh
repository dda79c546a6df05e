// Tile geometry, shared-memory layouts and global <-> shared copies of the OSRA attention kernels.
// A block is 4 warps on a tile of 64 query rows; warp w owns the 16-row strip [16w, 16w + 16) of the tile from
// the scores to the written outputs. Keys come in chunks of KC (a multiple of 16: all keys when they fit).
// Padded sizes: head dim Dp = D rounded up to 16, with zero columns; rows past N or M are zero rows.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cuda_utils.cuh"

namespace transxnet_ops {
namespace attn {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = 16 * kWarps;  // query rows per tile
constexpr int kSmemAlign = 128;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Rows (or keys) left from `left`, clamped to [0, cap].
__device__ __forceinline__ int clamp_rows(int64_t left, int cap) {
  return static_cast<int>(left < 0 ? 0 : left > cap ? cap : left);
}

// Row strides, in elements. Operand rows (T) carry 16 spare bytes and fp32 rows 8 (scores) or 4 (outputs) spare
// floats: this staggers the banks of consecutive rows and keeps every 16-row WMMA step 32-byte aligned.
struct Geometry {
  int Dp, KC;  // padded head dim, keys per chunk
  int ldx;     // q, k, v, grad_out tiles (T)
  int lds;     // scores (fp32); P is written over them in T, with the same bytes per row
  int ld_ds;   // score gradients dS (T), backward
  int ldo;     // fp32 output rows: forward O with several key chunks, backward dq
};

__host__ __device__ inline Geometry make_geometry(int Dp, int KC, int elem_bytes) {
  const int pad = 16 / elem_bytes;
  return {Dp, KC, Dp + pad, KC + 8, KC + pad, Dp + 4};
}

// Carves 128-byte aligned regions out of one dynamic shared-memory block.
struct SmemCarver {
  size_t bytes = 0;
  __host__ __device__ size_t take(size_t n) {
    const size_t at = (bytes + kSmemAlign - 1) / kSmemAlign * kSmemAlign;
    bytes = at + n;
    return at;
  }
  __host__ __device__ size_t total() const { return (bytes + kSmemAlign - 1) / kSmemAlign * kSmemAlign + kSmemAlign; }
};

struct ForwardSmem {  // byte offsets
  size_t k, v, q, s, bias, stats, row_max, o, bytes;
};
// `online`: keys in several chunks, so the output accumulates in fp32 shared memory between them.
__host__ __device__ inline ForwardSmem forward_smem(const Geometry& g, int elem_bytes, bool online) {
  SmemCarver c;
  ForwardSmem m;
  m.k = c.take(size_t(g.KC) * g.ldx * elem_bytes);
  m.v = c.take(size_t(g.KC) * g.ldx * elem_bytes);
  m.q = c.take(size_t(kTileRows) * g.ldx * elem_bytes);
  m.s = c.take(size_t(kTileRows) * g.lds * 4);
  m.bias = c.take(size_t(kTileRows) * g.KC * elem_bytes);  // the tile's bias as stored (row stride M or KC)
  m.stats = c.take(size_t(kWarps) * 2 * 256 * 4);           // per warp: two 16x16 fp32 tiles (scratch, row stats)
  m.row_max = c.take(kTileRows * 4);
  m.o = online ? c.take(size_t(kTileRows) * g.ldo * 4) : 0;
  m.bytes = c.total();  // + one alignment slack for the block's base address
  return m;
}

struct BackwardSmem {  // byte offsets
  size_t k, v, q, dout, s, ds, dq, scratch, delta, bytes;
};
__host__ __device__ inline BackwardSmem backward_smem(const Geometry& g, int elem_bytes) {
  SmemCarver c;
  BackwardSmem m;
  m.k = c.take(size_t(g.KC) * g.ldx * elem_bytes);
  m.v = c.take(size_t(g.KC) * g.ldx * elem_bytes);
  m.q = c.take(size_t(kTileRows) * g.ldx * elem_bytes);
  m.dout = c.take(size_t(kTileRows) * g.ldx * elem_bytes);
  m.s = c.take(size_t(kTileRows) * g.lds * 4);
  m.ds = c.take(size_t(kTileRows) * g.ld_ds * elem_bytes);
  m.dq = c.take(size_t(kTileRows) * g.ldo * 4);
  m.scratch = c.take(size_t(kWarps) * 16 * 16 * 4);  // per warp: a 16x16 fp32 block on its way to T
  m.delta = c.take(size_t(kWarps) * 16 * 16 * 4);    // per warp: delta as a row-broadcast 16x16 tile
  m.bytes = c.total();
  return m;
}

__device__ __forceinline__ unsigned char* align_smem(unsigned char* raw) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(raw);
  return raw + (kSmemAlign - a % kSmemAlign) % kSmemAlign;
}

// Zero `bytes` (a multiple of 16) of shared memory with threads tid, tid + nthreads, ...
__device__ __forceinline__ void zero_smem(unsigned char* p, size_t bytes, int tid, int nthreads) {
  uint4* v = reinterpret_cast<uint4*>(p);
  const uint4 z = make_uint4(0, 0, 0, 0);
  for (size_t i = tid; i < bytes / 16; i += nthreads) v[i] = z;
}

// Walks the elements (or vectors) e = first, first + step, ... of a rows x cols block in row-major order, calling
// fn(r, c, e) with r = e / cols, c = e % cols kept up to date without a division per element. kUnroll iterations
// are unrolled so that copies from global memory keep that many loads in flight.
template <int kUnroll = 1, typename Fn>
__device__ __forceinline__ void for_each_strided(int rows, int cols, int first, int step, Fn&& fn) {
  const int total = rows * cols;
  if (first >= total) return;
  const int step_r = step / cols, step_c = step - step_r * cols;
  int r = first / cols, c = first - r * cols;
#pragma unroll kUnroll
  for (int e = first; e < total; e += step) {
    fn(r, c, e);
    r += step_r;
    c += step_c;
    if (c >= cols) {
      c -= cols;
      ++r;
    }
  }
}

template <typename V, typename T>
__device__ __forceinline__ void copy_rows_as(T* dst, int ld, const T* __restrict__ src, int64_t src_ld, int rows,
                                             int cols, int tid, int nthreads) {
  constexpr int kE = sizeof(V) / sizeof(T);
  for_each_strided<4>(rows, cols / kE, tid, nthreads, [&](int r, int c, int) {
    *reinterpret_cast<V*>(dst + r * ld + c * kE) = *reinterpret_cast<const V*>(src + r * src_ld + c * kE);
  });
}

// Copy `rows` rows of `cols` elements (global row stride src_ld) into shared rows of stride ld; 16- or 8-byte
// accesses when the addresses and lengths allow.
template <typename T>
__device__ __forceinline__ void load_rows_strided(T* dst, int ld, const T* __restrict__ src, int64_t src_ld, int rows,
                                                  int cols, int tid, int nthreads) {
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(cols * sizeof(T)) |
                          static_cast<uintptr_t>(src_ld * sizeof(T));
  if (align % 16 == 0) {
    copy_rows_as<uint4>(dst, ld, src, src_ld, rows, cols, tid, nthreads);
  } else if (align % 8 == 0) {
    copy_rows_as<uint2>(dst, ld, src, src_ld, rows, cols, tid, nthreads);
  } else {
    copy_rows_as<T>(dst, ld, src, src_ld, rows, cols, tid, nthreads);
  }
}

// The same for rows that are contiguous in global memory (row stride cols).
template <typename T>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* __restrict__ src, int rows, int cols, int tid,
                                          int nthreads) {
  load_rows_strided(dst, ld, src, cols, rows, cols, tid, nthreads);
}

template <typename T>
__device__ __forceinline__ void zero_rows(T* dst, int ld, int r0, int r1, int cols, int tid, int nthreads) {
  for_each_strided(r1 - r0, cols, tid, nthreads, [&](int r, int c, int) { dst[(r0 + r) * ld + c] = from_float<T>(0.f); });
}

template <typename T>
__device__ __forceinline__ void store_pair(T* p, float a, float b);
template <>
__device__ __forceinline__ void store_pair<float>(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <>
__device__ __forceinline__ void store_pair<__half>(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
template <>
__device__ __forceinline__ void store_pair<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// One warp writes dst[r * cols + c] = src[r * ld + c] * scale * (row_scale ? row_scale[r] : 1) for r < rows,
// c < cols: global rows are contiguous, so consecutive lanes write consecutive elements (in pairs when aligned).
template <typename T>
__device__ __forceinline__ void store_rows(T* __restrict__ dst, const float* src, int ld, int rows, int cols,
                                           const float* row_scale, float scale, int lane) {
  if (cols % 2 == 0 && reinterpret_cast<uintptr_t>(dst) % (2 * sizeof(T)) == 0) {
    for_each_strided(rows, cols / 2, lane, 32, [&](int r, int c, int u) {
      const float f = row_scale ? scale * row_scale[r] : scale;
      store_pair<T>(dst + 2 * u, f * src[r * ld + 2 * c], f * src[r * ld + 2 * c + 1]);
    });
  } else {
    for_each_strided(rows, cols, lane, 32, [&](int r, int c, int e) {
      dst[e] = from_float<T>((row_scale ? scale * row_scale[r] : scale) * src[r * ld + c]);
    });
  }
}

// Offset of the (b, h) slice of a (Bb, Hb, N, M) bias broadcast over batch (Bb == 1) and/or heads (Hb == 1).
__device__ __forceinline__ int64_t bias_slice_offset(int64_t b, int64_t h, int64_t Bb, int64_t Hb, int64_t N,
                                                     int64_t M) {
  return ((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * N * M;
}

}  // namespace attn
}  // namespace transxnet_ops
