"""IDConv Triton kernels (@triton.jit only; launchers in idconv.py).

Layout: x, grad_y (B*C planes of H x W), weight (B*C planes of K x K), bias (B*C), all contiguous.
One program per (plane, BLOCK_H x BLOCK_W output tile); the K x K taps are masked shifted loads, so zero
padding costs nothing. Accumulation is fp32 (fp64 for float64 inputs: gradcheck runs them in the interpreter).
Plane offsets are int64: B*C*H*W may exceed 2**31 even though one plane never does.
"""
import triton
import triton.language as tl


@triton.jit
def _tile_coords(pid, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program id -> (plane as int64, tile index in the plane, row offsets, column offsets)."""
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles = tl.cdiv(H, BLOCK_H) * tiles_w
    plane = pid // tiles
    tile = pid % tiles
    offs_h = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_w = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    return plane.to(tl.int64), tile, offs_h, offs_w


@triton.jit
def _idconv_fwd(x_ptr, w_ptr, b_ptr, y_ptr, H, W,
                K: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, IS_FP64: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """y = bias + x correlated with w, per plane.

    FLIP=True correlates with the kernel rotated by 180 degrees: that is grad_x = conv_transpose(grad_y, w)
    of the forward, so the backward reuses this kernel with x := grad_y.
    """
    plane, _, offs_h, offs_w = _tile_coords(tl.program_id(0), H, W, BLOCK_H, BLOCK_W)
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float64 if IS_FP64 else tl.float32)
    # Pointers of the output tile's own positions; tap (i, j) reads them shifted by one scalar offset.
    x_tile = x_ptr + plane * H * W + offs_h[:, None] * W + offs_w[None, :]
    w_plane = w_ptr + plane * K * K
    P: tl.constexpr = K // 2
    # Rows as a runtime loop, columns unrolled: full unrolling of K*K taps would blow up compile time at K=31.
    for i in range(K):
        ih = offs_h + (i - P)
        row_ok = (ih >= 0) & (ih < H)
        for j in tl.static_range(K):
            iw = offs_w + (j - P)
            mask = row_ok[:, None] & ((iw >= 0) & (iw < W))[None, :]
            xv = tl.load(x_tile + ((i - P) * W + (j - P)), mask=mask, other=0.0)
            if FLIP:
                wv = tl.load(w_plane + (K - 1 - i) * K + (K - 1 - j))
            else:
                wv = tl.load(w_plane + i * K + j)
            acc += xv.to(acc.dtype) * wv.to(acc.dtype)
    if HAS_BIAS:
        acc += tl.load(b_ptr + plane).to(acc.dtype)
    out_mask = (offs_h < H)[:, None] & (offs_w < W)[None, :]
    tl.store(y_ptr + plane * H * W + offs_h[:, None] * W + offs_w[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=out_mask)


@triton.jit
def _idconv_bwd_dw(gy_ptr, x_ptr, partial_ptr, H, W,
                   K: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Per (plane, tile) partial sums: partial[plane, tile, i*K+j] = sum(grad_y * x shifted by (i, j)) and
    partial[plane, tile, K*K] = sum(grad_y). Every entry is written, so the buffer needs no zeroing;
    _idconv_bwd_reduce sums the tiles in a fixed order (deterministic, no atomics)."""
    pid = tl.program_id(0)
    plane, _, offs_h, offs_w = _tile_coords(pid, H, W, BLOCK_H, BLOCK_W)
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    out_mask = (offs_h < H)[:, None] & (offs_w < W)[None, :]
    gy = tl.load(gy_ptr + plane * H * W + offs_h[:, None] * W + offs_w[None, :], mask=out_mask, other=0.0)
    gy = gy.to(acc_ty)
    x_tile = x_ptr + plane * H * W + offs_h[:, None] * W + offs_w[None, :]
    out = partial_ptr + pid.to(tl.int64) * (K * K + 1)  # pid = plane * n_tiles + tile
    P: tl.constexpr = K // 2
    for i in range(K):
        ih = offs_h + (i - P)
        row_ok = (ih >= 0) & (ih < H)
        for j in tl.static_range(K):
            iw = offs_w + (j - P)
            mask = row_ok[:, None] & ((iw >= 0) & (iw < W))[None, :]
            xv = tl.load(x_tile + ((i - P) * W + (j - P)), mask=mask, other=0.0).to(acc_ty)
            tl.store(out + i * K + j, tl.sum(tl.sum(gy * xv, axis=1), axis=0))
    tl.store(out + K * K, tl.sum(tl.sum(gy, axis=1), axis=0))


@triton.jit
def _idconv_bwd_reduce(partial_ptr, gw_ptr, gb_ptr, n_tiles,
                       KK: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_KK: tl.constexpr):
    """One program per plane: sum the (n_tiles, KK + 1) partials over tiles, in tile order, and write
    grad_weight[plane, :KK] and grad_bias[plane] in the output dtype."""
    plane = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_KK)
    valid = offs < KK + 1
    rows = partial_ptr + plane * n_tiles * (KK + 1) + offs
    acc = tl.zeros([BLOCK_KK], dtype=tl.float64 if IS_FP64 else tl.float32)
    for t in range(n_tiles):
        acc += tl.load(rows + t * (KK + 1), mask=valid, other=0.0)
    tl.store(gw_ptr + plane * KK + offs, acc.to(gw_ptr.dtype.element_ty), mask=offs < KK)
    # the last entry is the bias sum: shift the pointer so that only offs == KK lands on grad_bias[plane]
    tl.store(gb_ptr + plane + (offs - KK), acc.to(gb_ptr.dtype.element_ty), mask=offs == KK)
