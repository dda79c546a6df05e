"""Depthwise-convolution Triton kernels (@triton.jit only), shared by IDConv (per-sample weights) and the static /
multi-scale dwconv2d; the launchers are idconv.py and dwconv.py.

Layout: x, y, grad_y, grad_x of a launch share one set of element strides (SB, SC, SH, SW): contiguous NCHW
(SW = 1, which Triton specialises, so that path compiles as before) or channels_last (SC = 1); a "plane" is one
(b, c) map of H x W. Stride 1, zero padding K // 2. Accumulation is fp32 (fp64 for float64 inputs, which only the interpreter's gradcheck uses).

Register-window path (K <= 9, `_dw_fwd` / `_dw_bwd`): a one-warp program owns BLOCK_P planes (consecutive
channels of one sample; static weights also loop over a chunk of NB samples). Each thread owns a run of E
consecutive columns of one plane and streams all rows top to bottom (LANES threads per row segment). Triton
cannot index registers, so the reuse is written with tuples that the compiler unrolls into registers:
  - the plane's K*K taps sit in registers (a tuple of tensors), loaded once per program;
  - per input row a thread loads the E + K - 1 columns its E outputs see (column shifts fold into the loads'
    immediate offsets) and feeds E*K*K FMAs from them: each value serves up to K column taps of the E outputs
    and all K output rows that row touches; K*E accumulators (one row of E per pending output row) roll down
    one row per step, the finished row is stored and a fresh one (= bias) enters at the bottom;
  - the loads of row r + 1 are issued before the FMAs of row r (one-row register prefetch).
sm_90 SASS of the bf16 forward loop at K = 7, E = 7: 343 FFMA in 469 instructions (13 loads). The backward is one
pass over grad_y rows: the same window of grad_y serves grad_x (the flipped-kernel correlation, rolling like the
forward) and grad_weight (K*K register accumulators, fed by the K rows of x around the grad_y row that the thread
keeps at its E columns, rolling too); grad_bias is the sum of grad_y (K = 7, E = 4: 392 FFMA in 515). grad_weight
is reduced inside the program (over its rows, columns, samples, then across lanes): IDConv planes are finished
there, static weights leave one fp32 partial per (sample chunk, channel) for `_dw_reduce_partials` (fixed
order, no atomics).

Multi-scale: up to four channel segments with their own constexpr kernel size (K0..K3) run in one launch; the
program id picks the segment (launchers order segments by decreasing K so the heavy programs start first).

Direct path (9 < K <= 31, `_dw_fwd_direct` / `_dw_wgrad_direct`): a BLOCK_H x BLOCK_W tile per step with one masked
shifted load per tap; K*K weights or gradient accumulators would not fit in registers. Simple and exact.
"""
import triton
import triton.language as tl


# ---------------------------------------------------------------------------------------------- shared helpers
@triton.jit
def _repeat(n: tl.constexpr, value):
    out = ()
    for _ in tl.static_range(n):
        out = out + (value,)
    return out


@triton.jit
def _window(ptr, masks, SW, N: tl.constexpr, IS_FP64: tl.constexpr):
    """N consecutive columns (column stride SW) from ptr on (each thread: its own run of columns), zero where
    masks[d] is off."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    out = ()
    for d in tl.static_range(N):
        out = out + (tl.load(ptr + d * SW, mask=masks[d], other=0.0).to(ACC),)
    return out


@triton.jit
def _window_masks(col0, p_ok, W, N: tl.constexpr):
    """masks[d]: column col0 + d is inside the map (and the plane exists)."""
    out = ()
    for d in tl.static_range(N):
        c = col0 + d
        out = out + (p_ok[:, None] & ((c >= 0) & (c < W))[None, :],)
    return out


@triton.jit
def _load_taps(w_rows, p_ok, K: tl.constexpr, IS_FP64: tl.constexpr, LANES: tl.constexpr):
    """The K*K taps of each plane (w_rows points at tap 0) as a tuple of register tensors, already broadcast to
    the [BLOCK_P, LANES] tile (free on the GPU: one register per thread; saves a broadcast per FMA in the
    interpreter)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    out = ()
    for k in tl.static_range(K * K):
        tap = tl.load(w_rows + k, mask=p_ok, other=0.0).to(ACC)[:, None]
        out = out + (tl.broadcast_to(tap, [w_rows.shape[0], LANES]),)
    return out


@triton.jit
def _block_coords(local, c_count, NB, BLOCK_P: tl.constexpr):
    """Program index inside a segment -> (sample chunk, first channel of the block, channel offsets, valid)."""
    n_blocks = tl.cdiv(c_count, BLOCK_P)
    chunk = local // n_blocks
    c_first = (local - chunk * n_blocks) * BLOCK_P
    c_rel = tl.arange(0, BLOCK_P)
    return chunk, c_first, c_rel, c_first + c_rel < c_count


# ------------------------------------------------------------------------------- register window: forward
@triton.jit
def _fwd_tile(x_tile, y_tile, offs, masks, taps, bias, H, SH, SW,
              K: tl.constexpr, E: tl.constexpr, IS_FP64: tl.constexpr):
    """y = bias + x (*) taps over all rows of one row segment (LANES * E columns). x_tile / y_tile point at the
    segment's first plane, row 0; offs locate each thread's first column; masks[d]: its column d - K//2 is in
    the map."""
    PAD: tl.constexpr = K // 2
    N: tl.constexpr = E + K - 1  # input columns a thread's E outputs see
    # accs[q * E + e]: output row r - PAD + q, column e, while input row r streams through (kernel row K-1-q)
    accs = _repeat(K * E, bias)
    xs = _window(x_tile + offs - PAD * SW, masks, SW, N, IS_FP64)
    for r in range(H):
        xs_next = _window(x_tile + tl.minimum(r + 1, H - 1) * SH + offs - PAD * SW, masks, SW, N, IS_FP64)
        done = ()
        for q in tl.static_range(K):
            for e in tl.static_range(E):
                acc = accs[q * E + e]
                for j in tl.static_range(K):
                    acc += taps[(K - 1 - q) * K + j] * xs[e + j]
                done = done + (acc,)
        out = y_tile + (r - PAD) * SH + offs
        for e in tl.static_range(E):
            tl.store(out + e * SW, done[e].to(y_tile.dtype.element_ty), mask=masks[PAD + e] & (r >= PAD))
        accs = done[E:] + _repeat(E, bias)
        xs = xs_next
    for q in tl.static_range(PAD):  # the last PAD rows see only zero padding below them
        row = H - PAD + q
        for e in tl.static_range(E):
            tl.store(y_tile + row * SH + offs + e * SW, accs[q * E + e].to(y_tile.dtype.element_ty),
                     mask=masks[PAD + e] & (row >= 0))


@triton.jit
def _fwd_program(local, c_start, c_count, w_off, x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW, NB,
                 K: tl.constexpr, E: tl.constexpr, PER_SAMPLE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr, LANES: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    chunk, c_first, c_rel, p_ok = _block_coords(local, c_count, NB, BLOCK_P)
    b_lo = chunk * NB
    ch = c_start + c_first + c_rel  # channel index in x
    if PER_SAMPLE:  # NB == 1: this program's only sample b_lo has its own taps
        taps = _load_taps(w_ptr + (b_lo * C + ch).to(tl.int64) * (K * K), p_ok, K, IS_FP64, LANES)
        bias_ptr = b_ptr + b_lo * C + ch
    else:
        taps = _load_taps(w_ptr + w_off + (c_first + c_rel) * (K * K), p_ok, K, IS_FP64, LANES)
        bias_ptr = b_ptr + ch
    zero = tl.zeros([BLOCK_P, LANES], dtype=ACC)
    if HAS_BIAS:
        bias = zero + tl.load(bias_ptr, mask=p_ok, other=0.0).to(ACC)[:, None]
    else:
        bias = zero
    lane_col = tl.arange(0, LANES) * E  # each thread owns E consecutive columns
    offs = c_rel[:, None] * SC + (lane_col * SW)[None, :]
    for b in range(b_lo, tl.minimum(B, b_lo + NB)):
        plane0 = tl.cast(b, tl.int64) * SB + (c_start + c_first).to(tl.int64) * SC
        for w0 in range(0, W, LANES * E):
            masks = _window_masks(w0 + lane_col - K // 2, p_ok, W, E + K - 1)
            tile = plane0 + w0 * SW
            _fwd_tile(x_ptr + tile, y_ptr + tile, offs, masks, taps, bias, H, SH, SW, K, E, IS_FP64)


@triton.jit
def _dw_fwd(x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW, NB,
            C_START0, C_COUNT0, W_OFF0, PID_END0, C_START1, C_COUNT1, W_OFF1, PID_END1,
            C_START2, C_COUNT2, W_OFF2, PID_END2, C_START3, C_COUNT3, W_OFF3, PID_END3,
            K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, NSEG: tl.constexpr,
            E: tl.constexpr, PER_SAMPLE: tl.constexpr, HAS_BIAS: tl.constexpr, IS_FP64: tl.constexpr,
            BLOCK_P: tl.constexpr, LANES: tl.constexpr):
    """Forward of up to four segments (channels [C_STARTs, +C_COUNTs) with kernel size Ks, taps at W_OFFs in
    the packed weight; programs [PID_END(s-1), PID_ENDs)). PER_SAMPLE: IDConv's (B, C, K, K) weight and (B, C)
    bias, one segment, NB = 1."""
    pid = tl.program_id(0)
    if pid < PID_END0:
        _fwd_program(pid, C_START0, C_COUNT0, W_OFF0, x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW, NB,
                     K0, E, PER_SAMPLE, HAS_BIAS, IS_FP64, BLOCK_P, LANES)
    if NSEG > 1:
        if (pid >= PID_END0) & (pid < PID_END1):
            _fwd_program(pid - PID_END0, C_START1, C_COUNT1, W_OFF1, x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW,
                         NB, K1, E, PER_SAMPLE, HAS_BIAS, IS_FP64, BLOCK_P, LANES)
    if NSEG > 2:
        if (pid >= PID_END1) & (pid < PID_END2):
            _fwd_program(pid - PID_END1, C_START2, C_COUNT2, W_OFF2, x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW,
                         NB, K2, E, PER_SAMPLE, HAS_BIAS, IS_FP64, BLOCK_P, LANES)
    if NSEG > 3:
        if pid >= PID_END2:
            _fwd_program(pid - PID_END2, C_START3, C_COUNT3, W_OFF3, x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW,
                         NB, K3, E, PER_SAMPLE, HAS_BIAS, IS_FP64, BLOCK_P, LANES)


# ------------------------------------------------------------------------------ register window: backward
@triton.jit
def _bwd_tile(gy_tile, x_tile, gx_tile, offs, masks, taps, gws, gb, H, SH, SW,
              K: tl.constexpr, E: tl.constexpr, IS_FP64: tl.constexpr):
    """One pass over all rows of a row segment (pointers as in _fwd_tile): writes grad_x, returns the K*K
    grad_weight accumulators `gws` and the grad_bias accumulator `gb` with this tile's contributions added."""
    PAD: tl.constexpr = K // 2
    N: tl.constexpr = E + K - 1
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    zero = tl.zeros_like(gb)
    # grad_x[o, w] = sum_ij taps[i, j] * grad_y[o - i + PAD, w - j + PAD]: grad_y row s feeds grad_x row
    # s - PAD + i (rolling slot q = i); output column e reads window column e + K - 1 - j.
    gxs = _repeat(K * E, zero)
    # grad_w[i, j] = sum_{s, u} grad_y[s, u - j + PAD] * x[s + i - PAD, u]: for grad_y row s the thread keeps
    # x rows s - PAD .. s + PAD at its own E columns, xr[i * E + e], rolling like the accumulators.
    xr = ()
    for i in tl.static_range(K):
        row = i - PAD
        for e in tl.static_range(E):
            xr = xr + (tl.load(x_tile + row * SH + offs + e * SW, mask=masks[PAD + e] & (row >= 0) & (row < H),
                               other=0.0).to(ACC),)
    g = _window(gy_tile + offs - PAD * SW, masks, SW, N, IS_FP64)
    for s in range(H):
        g_next = _window(gy_tile + tl.minimum(s + 1, H - 1) * SH + offs - PAD * SW, masks, SW, N, IS_FP64)
        x_row = s + PAD + 1
        x_next = ()
        for e in tl.static_range(E):
            x_next = x_next + (tl.load(x_tile + x_row * SH + offs + e * SW, mask=masks[PAD + e] & (x_row < H),
                                       other=0.0).to(ACC),)
        for e in tl.static_range(E):
            gb += g[e + PAD]
        done = ()
        for q in tl.static_range(K):
            for e in tl.static_range(E):
                acc = gxs[q * E + e]
                for j in tl.static_range(K):
                    acc += taps[q * K + j] * g[e + K - 1 - j]
                done = done + (acc,)
        gws_new = ()
        for i in tl.static_range(K):
            for j in tl.static_range(K):
                acc = gws[i * K + j]
                for e in tl.static_range(E):
                    acc += g[e + K - 1 - j] * xr[i * E + e]
                gws_new = gws_new + (acc,)
        gws = gws_new
        out = gx_tile + (s - PAD) * SH + offs
        for e in tl.static_range(E):
            tl.store(out + e * SW, done[e].to(gx_tile.dtype.element_ty), mask=masks[PAD + e] & (s >= PAD))
        gxs = done[E:] + _repeat(E, zero)
        xr = xr[E:] + x_next
        g = g_next
    for q in tl.static_range(PAD):
        row = H - PAD + q
        for e in tl.static_range(E):
            tl.store(gx_tile + row * SH + offs + e * SW, gxs[q * E + e].to(gx_tile.dtype.element_ty),
                     mask=masks[PAD + e] & (row >= 0))
    return gws, gb


@triton.jit
def _bwd_program(local, c_start, c_count, w_off, gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr, part_ptr,
                 B, C, H, W, SB, SC, SH, SW, NB, TAPS, PART_ROW,
                 K: tl.constexpr, E: tl.constexpr, PER_SAMPLE: tl.constexpr, IS_FP64: tl.constexpr,
                 BLOCK_P: tl.constexpr, LANES: tl.constexpr):
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    chunk, c_first, c_rel, p_ok = _block_coords(local, c_count, NB, BLOCK_P)
    b_lo = chunk * NB
    ch = c_start + c_first + c_rel
    if PER_SAMPLE:
        w_rows = (b_lo * C + ch).to(tl.int64) * (K * K)
    else:
        w_rows = w_off + (c_first + c_rel) * (K * K)
    taps = _load_taps(w_ptr + w_rows, p_ok, K, IS_FP64, LANES)
    zero = tl.zeros([BLOCK_P, LANES], dtype=ACC)
    gws = _repeat(K * K, zero)
    gb = zero
    lane_col = tl.arange(0, LANES) * E
    offs = c_rel[:, None] * SC + (lane_col * SW)[None, :]
    for b in range(b_lo, tl.minimum(B, b_lo + NB)):
        plane0 = tl.cast(b, tl.int64) * SB + (c_start + c_first).to(tl.int64) * SC
        for w0 in range(0, W, LANES * E):
            masks = _window_masks(w0 + lane_col - K // 2, p_ok, W, E + K - 1)
            tile = plane0 + w0 * SW
            gws, gb = _bwd_tile(gy_ptr + tile, x_ptr + tile, gx_ptr + tile, offs, masks,
                                taps, gws, gb, H, SH, SW, K, E, IS_FP64)
    # reduce over the lanes; rows, columns and samples are already summed (fixed order: deterministic)
    if PER_SAMPLE:  # IDConv: this program owns the planes, their gradients are final
        for k in tl.static_range(K * K):
            tl.store(gw_ptr + w_rows + k, tl.sum(gws[k], axis=1).to(gw_ptr.dtype.element_ty), mask=p_ok)
        tl.store(gb_ptr + b_lo * C + ch, tl.sum(gb, axis=1).to(gb_ptr.dtype.element_ty), mask=p_ok)
    else:  # static: one partial row per sample chunk, summed over chunks by _dw_reduce_partials
        row = part_ptr + chunk.to(tl.int64) * PART_ROW
        for k in tl.static_range(K * K):
            tl.store(row + w_rows + k, tl.sum(gws[k], axis=1), mask=p_ok)
        tl.store(row + TAPS + ch, tl.sum(gb, axis=1), mask=p_ok)


@triton.jit
def _dw_bwd(gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr, part_ptr, B, C, H, W, SB, SC, SH, SW, NB, TAPS,
            PART_ROW,
            C_START0, C_COUNT0, W_OFF0, PID_END0, C_START1, C_COUNT1, W_OFF1, PID_END1,
            C_START2, C_COUNT2, W_OFF2, PID_END2, C_START3, C_COUNT3, W_OFF3, PID_END3,
            K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, NSEG: tl.constexpr,
            E: tl.constexpr, PER_SAMPLE: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_P: tl.constexpr,
            LANES: tl.constexpr):
    """Fused backward of up to four segments (see _dw_fwd): grad_x, and grad_weight / grad_bias either final
    (PER_SAMPLE, into gw_ptr / gb_ptr) or as fp32 partials part[chunk, TAPS + C] (static)."""
    pid = tl.program_id(0)
    if pid < PID_END0:
        _bwd_program(pid, C_START0, C_COUNT0, W_OFF0, gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr, part_ptr,
                     B, C, H, W, SB, SC, SH, SW, NB, TAPS, PART_ROW, K0, E, PER_SAMPLE, IS_FP64, BLOCK_P, LANES)
    if NSEG > 1:
        if (pid >= PID_END0) & (pid < PID_END1):
            _bwd_program(pid - PID_END0, C_START1, C_COUNT1, W_OFF1, gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr,
                         part_ptr, B, C, H, W, SB, SC, SH, SW, NB, TAPS, PART_ROW, K1, E, PER_SAMPLE, IS_FP64,
                         BLOCK_P, LANES)
    if NSEG > 2:
        if (pid >= PID_END1) & (pid < PID_END2):
            _bwd_program(pid - PID_END1, C_START2, C_COUNT2, W_OFF2, gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr,
                         part_ptr, B, C, H, W, SB, SC, SH, SW, NB, TAPS, PART_ROW, K2, E, PER_SAMPLE, IS_FP64,
                         BLOCK_P, LANES)
    if NSEG > 3:
        if pid >= PID_END2:
            _bwd_program(pid - PID_END2, C_START3, C_COUNT3, W_OFF3, gy_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, gb_ptr,
                         part_ptr, B, C, H, W, SB, SC, SH, SW, NB, TAPS, PART_ROW, K3, E, PER_SAMPLE, IS_FP64,
                         BLOCK_P, LANES)


@triton.jit
def _dw_reduce_partials(part_ptr, gw_ptr, gb_ptr, n_rows, TAPS, PART_ROW,
                        HAS_GB: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    """grad_weight (TAPS) and grad_bias (C) = sum over the rows of part[n_rows, TAPS + C], in row order."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < PART_ROW
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    acc = tl.zeros([BLOCK], dtype=ACC)
    row_ptr = part_ptr + offs
    for _ in range(n_rows):
        acc += tl.load(row_ptr, mask=valid, other=0.0)
        row_ptr += PART_ROW
    tl.store(gw_ptr + offs, acc.to(gw_ptr.dtype.element_ty), mask=offs < TAPS)
    if HAS_GB:
        tl.store(gb_ptr + (offs - TAPS), acc.to(gb_ptr.dtype.element_ty), mask=valid & (offs >= TAPS))


# --------------------------------------------------------------------------------- direct path (large K)
@triton.jit
def _direct_coords(H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    return tl.cdiv(W, BLOCK_W), tl.cdiv(H, BLOCK_H) * tl.cdiv(W, BLOCK_W), tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_W)


@triton.jit
def _dw_fwd_direct(x_ptr, w_ptr, b_ptr, y_ptr, B, C, H, W, SB, SC, SH, SW, NB, C_START, C_COUNT, W_OFF,
                   K: tl.constexpr, FLIP: tl.constexpr, PER_SAMPLE: tl.constexpr, HAS_BIAS: tl.constexpr,
                   IS_FP64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One channel of one segment for a chunk of NB samples per program, tile by tile, one masked shifted load per
    tap. FLIP correlates with the kernel rotated by 180 degrees: grad_x = that of grad_y (bias then absent)."""
    PAD: tl.constexpr = K // 2
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    chunk = pid // C_COUNT
    c_loc = pid - chunk * C_COUNT
    ch = C_START + c_loc
    b_lo = chunk * NB
    tiles_w, n_tiles, rows, cols = _direct_coords(H, W, BLOCK_H, BLOCK_W)
    for b in range(b_lo, tl.minimum(B, b_lo + NB)):
        if PER_SAMPLE:
            w_plane = w_ptr + (b * C + ch).to(tl.int64) * (K * K)
            bias_ptr = b_ptr + b * C + ch
        else:
            w_plane = w_ptr + W_OFF + c_loc * (K * K)
            bias_ptr = b_ptr + ch
        plane = tl.cast(b, tl.int64) * SB + ch.to(tl.int64) * SC
        for t in range(n_tiles):
            oh = (t // tiles_w) * BLOCK_H + rows
            ow = (t % tiles_w) * BLOCK_W + cols
            pix = oh[:, None] * SH + ow[None, :] * SW
            acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
            if HAS_BIAS:
                acc += tl.load(bias_ptr).to(ACC)
            x_tile = x_ptr + plane + pix
            for i in range(K):
                ih = oh + (i - PAD)
                row_ok = (ih >= 0) & (ih < H)
                for j in tl.static_range(K):
                    iw = ow + (j - PAD)
                    mask = row_ok[:, None] & ((iw >= 0) & (iw < W))[None, :]
                    xv = tl.load(x_tile + ((i - PAD) * SH + (j - PAD) * SW), mask=mask, other=0.0)
                    if FLIP:
                        wv = tl.load(w_plane + (K - 1 - i) * K + (K - 1 - j))
                    else:
                        wv = tl.load(w_plane + i * K + j)
                    acc += xv.to(ACC) * wv.to(ACC)
            out_mask = (oh < H)[:, None] & (ow < W)[None, :]
            tl.store(y_ptr + plane + pix, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dw_wgrad_direct(gy_ptr, x_ptr, gw_ptr, gb_ptr, part_ptr, B, C, H, W, SB, SC, SH, SW, NB, C_START, C_COUNT,
                     W_OFF, TAPS, PART_ROW, K: tl.constexpr, PER_SAMPLE: tl.constexpr, IS_FP64: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """grad_weight / grad_bias of one channel over a chunk of NB samples (program layout of _dw_fwd_direct): kernel
    row by kernel row, K tile accumulators (one per column shift) reduced at the end of the row. Output as in
    _bwd_program: final for PER_SAMPLE, else the chunk's fp32 partial row."""
    PAD: tl.constexpr = K // 2
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    chunk = pid // C_COUNT
    c_loc = pid - chunk * C_COUNT
    ch = C_START + c_loc
    b_lo = chunk * NB
    b_hi = tl.minimum(B, b_lo + NB)
    tiles_w, n_tiles, rows, cols = _direct_coords(H, W, BLOCK_H, BLOCK_W)
    if PER_SAMPLE:
        gw_row = gw_ptr + (b_lo * C + ch).to(tl.int64) * (K * K)
    else:
        gw_row = part_ptr + chunk.to(tl.int64) * PART_ROW + W_OFF + c_loc * (K * K)
    zero = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for i in range(K):
        accs = _repeat(K, zero)
        for b in range(b_lo, b_hi):
            plane = tl.cast(b, tl.int64) * SB + ch.to(tl.int64) * SC
            for t in range(n_tiles):
                oh = (t // tiles_w) * BLOCK_H + rows
                ow = (t % tiles_w) * BLOCK_W + cols
                out_mask = (oh < H)[:, None] & (ow < W)[None, :]
                gy = tl.load(gy_ptr + plane + oh[:, None] * SH + ow[None, :] * SW, mask=out_mask,
                             other=0.0).to(ACC)
                ih = oh + (i - PAD)
                row_ok = (ih >= 0) & (ih < H)
                x_tile = x_ptr + plane + ih[:, None] * SH + ow[None, :] * SW
                new = ()
                for j in tl.static_range(K):
                    iw = ow + (j - PAD)
                    mask = row_ok[:, None] & ((iw >= 0) & (iw < W))[None, :]
                    new = new + (accs[j] + gy * tl.load(x_tile + (j - PAD) * SW, mask=mask, other=0.0).to(ACC),)
                accs = new
        for j in tl.static_range(K):
            tl.store(gw_row + i * K + j, tl.sum(tl.sum(accs[j], axis=1), axis=0).to(gw_row.dtype.element_ty))
    gb = zero
    for b in range(b_lo, b_hi):
        plane = tl.cast(b, tl.int64) * SB + ch.to(tl.int64) * SC
        for t in range(n_tiles):
            oh = (t // tiles_w) * BLOCK_H + rows
            ow = (t % tiles_w) * BLOCK_W + cols
            out_mask = (oh < H)[:, None] & (ow < W)[None, :]
            gb += tl.load(gy_ptr + plane + oh[:, None] * SH + ow[None, :] * SW, mask=out_mask, other=0.0).to(ACC)
    gb_sum = tl.sum(tl.sum(gb, axis=1), axis=0)
    if PER_SAMPLE:
        tl.store(gb_ptr + b_lo * C + ch, gb_sum.to(gb_ptr.dtype.element_ty))
    else:
        tl.store(part_ptr + chunk.to(tl.int64) * PART_ROW + TAPS + ch, gb_sum)
