"""OSRA reduce-path Triton kernels (@triton.jit only; launchers and the op contract in reduce.py).

Map kernels work on the reduced map (B, C, Ho, Wo): one program per (channel c, block of BB samples, output
tile); a tile is held as a [BB, R] register block over the flattened positions of a (TH + 2*HALO_H) x
(TW + 2*HALO_W) region (R a power of two >= its size). A tile that spans a whole dimension needs no halo there
(TransXNet's maps are ~7x7 at 224 px: one tile, no halo). Per-channel reductions never use atomics: each program
writes fp32 partials at its index p (fixed per channel), later programs combine them in index order.
x/u/out/grad offsets are int64 (B*C*H*W may exceed 2**31); accumulation is fp32 (fp64 for float64 inputs).

Partial slots of the backward (per channel, per map program): 0 grad local bias, 1..9 grad local weight,
10 sum(ds) = grad beta2, 11 sum(ds * v_hat) = grad gamma2, 12 sum(dv * g) = grad conv2, 13 sum(dz) = grad beta1,
14 sum(dz * u_hat) = grad gamma1, then NS + i*KS + j: grad conv1 tap (i, j).
"""
import triton
import triton.language as tl

NS = 15  # backward partial slots before the conv1 taps


# ------------------------------------------------------------------------------------------ shared helpers
@triton.jit
def _map_tile(pid, B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
              BB: tl.constexpr, R: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr):
    """pid -> channel c, partial index p of the program within its channel, samples b [BB, 1], region index
    r [1, R], plane row/col oh/ow [1, R], `in_plane` (region position inside the map) and `interior` (an
    output position of this tile)."""
    tile = pid % n_tiles
    bb = (pid // n_tiles) % n_bb
    c = pid // (n_tiles * n_bb)
    b = bb * BB + tl.arange(0, BB)[:, None]
    RW = TW + 2 * HALO_W
    RH = TH + 2 * HALO_H
    r = tl.arange(0, R)[None, :]
    rh = r // RW
    rw = r % RW
    oh = (tile // tiles_w) * TH - HALO_H + rh
    ow = (tile % tiles_w) * TW - HALO_W + rw
    in_plane = (r < RH * RW) & (oh >= 0) & (oh < Ho) & (ow >= 0) & (ow < Wo)
    interior = in_plane & (rh >= HALO_H) & (rh < RH - HALO_H) & (rw >= HALO_W) & (rw < RW - HALO_W)
    return c, bb * n_tiles + tile, b, r, oh, ow, in_plane & (b < B), interior & (b < B)


@triton.jit
def _map_offsets(b, c, oh, ow, C, Ho, Wo):
    return (b.to(tl.int64) * C + c) * (Ho * Wo) + oh * Wo + ow


@triton.jit
def _strided_conv(x_ptr, w1_ptr, c, b, oh, ow, mask, C, H, W,
                  SR: tl.constexpr, BB: tl.constexpr, R: tl.constexpr, ACC: tl.constexpr):
    """u[b, oh, ow] = sum_ij w1[c, i, j] * x[b, c, oh*SR - PAD + i, ow*SR - PAD + j], zero padding, KS = SR + 3."""
    KS: tl.constexpr = SR + 3
    PAD: tl.constexpr = KS // 2
    x_plane = x_ptr + (b.to(tl.int64) * C + c) * H * W
    ih0 = oh * SR - PAD
    iw0 = ow * SR - PAD
    acc = tl.zeros([BB, R], ACC)
    for i in range(KS):  # rows as a loop, columns unrolled (KS <= 11 for TransXNet's sr <= 8)
        ih = ih0 + i
        row_ok = mask & (ih >= 0) & (ih < H)
        for j in tl.static_range(KS):
            iw = iw0 + j
            xv = tl.load(x_plane + ih * W + iw, mask=row_ok & (iw >= 0) & (iw < W), other=0.0)
            acc += xv.to(ACC) * tl.load(w1_ptr + c * KS * KS + i * KS + j).to(ACC)
    return acc


@triton.jit
def _gelu(z):
    return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_grad(z):  # Phi(z) + z * phi(z)
    return 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327


@triton.jit
def _load_c(ptr, c, ACC: tl.constexpr):
    return tl.load(ptr + c).to(ACC)


@triton.jit
def _rstd(var, eps):
    return 1.0 / tl.sqrt(var + eps)


@triton.jit
def _store_moments(part_ptr, c, p, P, v, valid, ACC: tl.constexpr):
    """Partial (count, mean, M2) of the valid entries of v, at part[c, p, 0:3]."""
    cnt = tl.sum(tl.sum(valid.to(ACC), axis=1), axis=0)
    mean = tl.sum(tl.sum(tl.where(valid, v, 0.0), axis=1), axis=0) / tl.maximum(cnt, 1.0)
    dev = tl.where(valid, v - mean, 0.0)
    out = part_ptr + (c * P + p) * 3
    tl.store(out, cnt)
    tl.store(out + 1, mean)
    tl.store(out + 2, tl.sum(tl.sum(dev * dev, axis=1), axis=0))


@triton.jit
def _combine_moments(part_ptr, c, P, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Chan's combination of the channel's P (count, mean, M2) partials, in index order: (n, mean, M2)."""
    base = part_ptr + c * P * 3
    n_acc = tl.zeros([BLOCK_P], ACC)
    s_acc = tl.zeros([BLOCK_P], ACC)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        cnt = tl.load(base + offs * 3, mask=offs < P, other=0.0)
        n_acc += cnt
        s_acc += cnt * tl.load(base + offs * 3 + 1, mask=offs < P, other=0.0)
    n = tl.sum(n_acc, axis=0)
    mean = tl.sum(s_acc, axis=0) / n
    m2_acc = tl.zeros([BLOCK_P], ACC)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        cnt = tl.load(base + offs * 3, mask=offs < P, other=0.0)
        dev = tl.load(base + offs * 3 + 1, mask=offs < P, other=0.0) - mean
        m2_acc += tl.load(base + offs * 3 + 2, mask=offs < P, other=0.0) + cnt * dev * dev
    return n, mean, tl.sum(m2_acc, axis=0)


@triton.jit
def _sum_slot(part_ptr, c, P, slot, NT, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """sum over p (in order) of part[c, p, slot] for a (C, P, NT) partial buffer."""
    acc = tl.zeros([BLOCK_P], ACC)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + (c * P + offs) * NT + slot, mask=offs < P, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _tile_sum(v):
    return tl.sum(tl.sum(v, axis=1), axis=0)


# ------------------------------------------------------------------------------------------ forward
@triton.jit
def _reduce_fwd_stats1(x_ptr, w1_ptr, u_ptr, part_ptr, B, C, H, W, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                       SR: tl.constexpr, BB: tl.constexpr, R: tl.constexpr, IS_FP64: tl.constexpr):
    """Training stage 1: u = strided conv of x (stored in x's dtype) and the program's moments of u."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    P = n_bb * n_tiles
    c, p, b, r, oh, ow, valid, interior = _map_tile(tl.program_id(0), B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                                                     BB, R, 0, 0)
    u = _strided_conv(x_ptr, w1_ptr, c, b, oh, ow, valid, C, H, W, SR, BB, R, ACC).to(u_ptr.dtype.element_ty)
    tl.store(u_ptr + _map_offsets(b, c, oh, ow, C, Ho, Wo), u, mask=valid)
    _store_moments(part_ptr, c, p, P, u.to(ACC), valid, ACC)  # statistics of the rounded u, as officially


@triton.jit
def _reduce_fwd_stats2(u_ptr, stats_ptr, part1_ptr, part2_ptr, g1_ptr, b1_ptr, w2_ptr, eps1,
                       B, C, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                       BB: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, IS_FP64: tl.constexpr):
    """Training stage 2: BN1's batch statistics (stats rows 0-2, written by each channel's first program), then
    the program's moments of v = w2 * GELU(BN1(u))."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    P = n_bb * n_tiles
    c, p, b, r, oh, ow, valid, interior = _map_tile(tl.program_id(0), B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                                                     BB, R, 0, 0)
    n, mean1, m2 = _combine_moments(part1_ptr, c, P, BLOCK_P, ACC)
    var1 = m2 / n
    if p == 0:
        tl.store(stats_ptr + c, mean1)
        tl.store(stats_ptr + C + c, var1)
        tl.store(stats_ptr + 2 * C + c, m2 / (n - 1))
    a1 = _load_c(g1_ptr, c, ACC) * _rstd(var1, eps1)
    shift1 = _load_c(b1_ptr, c, ACC) - mean1 * a1
    u = tl.load(u_ptr + _map_offsets(b, c, oh, ow, C, Ho, Wo), mask=valid, other=0.0).to(ACC)
    v = _load_c(w2_ptr, c, ACC) * _gelu(a1 * u + shift1)
    _store_moments(part2_ptr, c, p, P, v, valid, ACC)


@triton.jit
def _reduce_fwd_out(x_ptr, u_ptr, out_ptr, stats_ptr, part2_ptr,
                    w1_ptr, g1_ptr, b1_ptr, rm1_ptr, rv1_ptr, w2_ptr, g2_ptr, b2_ptr, rm2_ptr, rv2_ptr, w3_ptr, b3_ptr,
                    eps1, eps2, B, C, H, W, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW, P2,
                    SR: tl.constexpr, TRAINING: tl.constexpr, SAVE_U: tl.constexpr, BB: tl.constexpr,
                    R: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr, BLOCK_P: tl.constexpr,
                    IS_FP64: tl.constexpr):
    """out = local_conv3x3(s) + local_bias + s with s = BN2(w2 * GELU(BN1(u))), on the tile + 1-pixel halo.

    Eval (TRAINING=False): the whole path in one launch: u from x on the halo'd tile (SAVE_U stores the tile's
    u for the backward), the running statistics, stats rows 0-5 written by each channel's first program.
    Training (stage 3): u from stage 1, BN1's statistics from stats rows 0-1, BN2's combined from stage 2's
    partials (rows 3-5 written by the channel's first program)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    c, p, b, r, oh, ow, valid, interior = _map_tile(tl.program_id(0), B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                                                     BB, R, HALO_H, HALO_W)
    offs = _map_offsets(b, c, oh, ow, C, Ho, Wo)
    if TRAINING:
        u = tl.load(u_ptr + offs, mask=valid, other=0.0).to(ACC)
        mean1 = tl.load(stats_ptr + c)
        var1 = tl.load(stats_ptr + C + c)
        n, mean2, m2 = _combine_moments(part2_ptr, c, P2, BLOCK_P, ACC)
        var2 = m2 / n
        if p == 0:
            tl.store(stats_ptr + 3 * C + c, mean2)
            tl.store(stats_ptr + 4 * C + c, var2)
            tl.store(stats_ptr + 5 * C + c, m2 / (n - 1))
    else:
        u = _strided_conv(x_ptr, w1_ptr, c, b, oh, ow, valid, C, H, W, SR, BB, R, ACC).to(out_ptr.dtype.element_ty)
        if SAVE_U:
            tl.store(u_ptr + offs, u, mask=interior)
        u = u.to(ACC)  # rounded to x's dtype, as the official conv writes it
        mean1 = _load_c(rm1_ptr, c, ACC)
        var1 = _load_c(rv1_ptr, c, ACC)
        mean2 = _load_c(rm2_ptr, c, ACC)
        var2 = _load_c(rv2_ptr, c, ACC)
        if p == 0:
            tl.store(stats_ptr + c, mean1)
            tl.store(stats_ptr + C + c, var1)
            tl.store(stats_ptr + 2 * C + c, var1)
            tl.store(stats_ptr + 3 * C + c, mean2)
            tl.store(stats_ptr + 4 * C + c, var2)
            tl.store(stats_ptr + 5 * C + c, var2)
    a1 = _load_c(g1_ptr, c, ACC) * _rstd(var1, eps1)
    a2 = _load_c(g2_ptr, c, ACC) * _rstd(var2, eps2)
    s = a2 * (_load_c(w2_ptr, c, ACC) * _gelu(a1 * (u - mean1) + _load_c(b1_ptr, c, ACC)) - mean2) \
        + _load_c(b2_ptr, c, ACC)
    s = tl.where(valid, s, 0.0)  # local_conv's zero padding outside the map
    acc = s + _load_c(b3_ptr, c, ACC)
    RW = TW + 2 * HALO_W
    for d in tl.static_range(9):
        di = d // 3 - 1
        dj = d % 3 - 1
        # an interior position's in-map neighbours lie in the region (halo, or the tile spans the dimension)
        inside = (oh + di >= 0) & (oh + di < Ho) & (ow + dj >= 0) & (ow + dj < Wo)
        idx = tl.broadcast_to(tl.minimum(tl.maximum(r + (di * RW + dj), 0), R - 1), [BB, R])
        acc += _load_c(w3_ptr, c * 9 + d, ACC) * tl.where(inside, tl.gather(s, idx, 1), 0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=interior)


# ------------------------------------------------------------------------------------------ backward
@triton.jit
def _recompute(u, valid, c, stats_ptr, C, g1_ptr, b1_ptr, w2_ptr, g2_ptr, b2_ptr, eps1, eps2, ACC: tl.constexpr):
    """The forward's per-element values from u: (u_hat, z, GELU(z), v_hat, s, per-channel r1, r2), zero off-map."""
    r1 = _rstd(tl.load(stats_ptr + C + c), eps1)
    r2 = _rstd(tl.load(stats_ptr + 4 * C + c), eps2)
    u_hat = tl.where(valid, (u - tl.load(stats_ptr + c)) * r1, 0.0)
    z = _load_c(g1_ptr, c, ACC) * u_hat + _load_c(b1_ptr, c, ACC)
    g = _gelu(z)
    v_hat = tl.where(valid, (_load_c(w2_ptr, c, ACC) * g - tl.load(stats_ptr + 3 * C + c)) * r2, 0.0)
    s = tl.where(valid, _load_c(g2_ptr, c, ACC) * v_hat + _load_c(b2_ptr, c, ACC), 0.0)
    return u_hat, z, tl.where(valid, g, 0.0), v_hat, s, r1, r2


@triton.jit
def _bn1_partials(dv, g, z, u_hat, valid, c, w2_ptr, slot_ptr, ACC: tl.constexpr):
    """From dv (BN2's input gradient): partials of grad conv2 / beta1 / gamma1 (slots 12-14); returns dz."""
    dz = tl.where(valid, _load_c(w2_ptr, c, ACC) * dv * _gelu_grad(z), 0.0)
    tl.store(slot_ptr + 12, _tile_sum(dv * g))
    tl.store(slot_ptr + 13, _tile_sum(dz))
    tl.store(slot_ptr + 14, _tile_sum(dz * u_hat))
    return dz


@triton.jit
def _reduce_bwd_map(gy_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, b1_ptr, w2_ptr, g2_ptr, b2_ptr, w3_ptr,
                    eps1, eps2, B, C, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW, NT,
                    TRAINING: tl.constexpr, BB: tl.constexpr, R: tl.constexpr, IS_FP64: tl.constexpr):
    """Backward through the 3x3 local conv + residual: ds = conv^T(dy) + dy, and partials of grad local
    weight/bias and of BN2's sums (slots 0-11). Training: ds -> dmap (BN2's batch terms need every program's
    partials first). Eval: BN2, conv2, GELU and BN1 are affine/elementwise: du -> dmap and slots 12-14 too."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    P = n_bb * n_tiles
    c, p, b, r, oh, ow, valid, interior = _map_tile(tl.program_id(0), B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                                                     BB, R, 0, 0)
    offs = _map_offsets(b, c, oh, ow, C, Ho, Wo)
    u = tl.load(u_ptr + offs, mask=valid, other=0.0).to(ACC)
    u_hat, z, g, v_hat, s, r1, r2 = _recompute(u, valid, c, stats_ptr, C, g1_ptr, b1_ptr, w2_ptr, g2_ptr, b2_ptr,
                                               eps1, eps2, ACC)
    slot_ptr = part_ptr + (c * P + p) * NT
    dy = tl.load(gy_ptr + offs, mask=valid, other=0.0).to(ACC)
    ds = dy
    tl.store(slot_ptr, _tile_sum(dy))
    for d in tl.static_range(9):
        di = d // 3 - 1
        dj = d % 3 - 1
        # dy at o - (di, dj) serves both ds[o] (conv transpose) and grad w3[d] = sum_o s[o] * dy[o - d]
        ok = valid & (oh - di >= 0) & (oh - di < Ho) & (ow - dj >= 0) & (ow - dj < Wo)
        dy_d = tl.load(gy_ptr + offs - (di * Wo + dj), mask=ok, other=0.0).to(ACC)
        ds += _load_c(w3_ptr, c * 9 + d, ACC) * dy_d
        tl.store(slot_ptr + 1 + d, _tile_sum(s * dy_d))
    tl.store(slot_ptr + 10, _tile_sum(ds))
    tl.store(slot_ptr + 11, _tile_sum(ds * v_hat))
    if TRAINING:
        tl.store(dmap_ptr + offs, ds, mask=valid)
    else:
        dv = _load_c(g2_ptr, c, ACC) * r2 * ds
        dz = _bn1_partials(dv, g, z, u_hat, valid, c, w2_ptr, slot_ptr, ACC)
        tl.store(dmap_ptr + offs, _load_c(g1_ptr, c, ACC) * r1 * dz, mask=valid)


@triton.jit
def _reduce_bwd_bn2(u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, b1_ptr, w2_ptr, g2_ptr, b2_ptr,
                    eps1, eps2, B, C, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW, NT,
                    BB: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, IS_FP64: tl.constexpr):
    """Training: BN2's backward with its batch terms (slots 10-11 combined), then conv2, GELU: dz -> dmap and
    partials of grad conv2 / beta1 / gamma1 (slots 12-14)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    P = n_bb * n_tiles
    c, p, b, r, oh, ow, valid, interior = _map_tile(tl.program_id(0), B, Ho, Wo, n_bb, tiles_w, n_tiles, TH, TW,
                                                     BB, R, 0, 0)
    offs = _map_offsets(b, c, oh, ow, C, Ho, Wo)
    u = tl.load(u_ptr + offs, mask=valid, other=0.0).to(ACC)
    u_hat, z, g, v_hat, s, r1, r2 = _recompute(u, valid, c, stats_ptr, C, g1_ptr, b1_ptr, w2_ptr, g2_ptr, b2_ptr,
                                               eps1, eps2, ACC)
    n = (B * Ho * Wo).to(ACC)
    sum_ds = _sum_slot(part_ptr, c, P, 10, NT, BLOCK_P, ACC)
    sum_ds_vhat = _sum_slot(part_ptr, c, P, 11, NT, BLOCK_P, ACC)
    ds = tl.load(dmap_ptr + offs, mask=valid, other=0.0)
    dv = tl.where(valid, _load_c(g2_ptr, c, ACC) * r2 * (ds - (sum_ds + v_hat * sum_ds_vhat) / n), 0.0)
    dz = _bn1_partials(dv, g, z, u_hat, valid, c, w2_ptr, part_ptr + (c * P + p) * NT, ACC)
    tl.store(dmap_ptr + offs, dz, mask=valid)


@triton.jit
def _du_coefficients(part_ptr, stats_ptr, g1_ptr, eps1, c, B, C, Ho, Wo, P, NT,
                     TRAINING: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """du = scale * (dmap - shift - u_hat * slope): BN1's input gradient from dmap (eval: dmap is du already)."""
    r1 = _rstd(tl.load(stats_ptr + C + c), eps1)
    if TRAINING:
        n = (B * Ho * Wo).to(ACC)
        return (_load_c(g1_ptr, c, ACC) * r1, _sum_slot(part_ptr, c, P, 13, NT, BLOCK_P, ACC) / n,
                _sum_slot(part_ptr, c, P, 14, NT, BLOCK_P, ACC) / n, tl.load(stats_ptr + c), r1)
    else:
        return 1.0, 0.0, 0.0, 0.0, r1


@triton.jit
def _load_du(dmap_ptr, u_ptr, offs, ok, scale, shift, slope, mean1, r1, TRAINING: tl.constexpr, ACC: tl.constexpr):
    d = tl.load(dmap_ptr + offs, mask=ok, other=0.0)
    if TRAINING:
        u_hat = (tl.load(u_ptr + offs, mask=ok, other=0.0).to(ACC) - mean1) * r1
        d = tl.where(ok, scale * (d - shift - u_hat * slope), 0.0)
    return d


@triton.jit
def _grad_x_chunk(pid, gx_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, w1_ptr, eps1, B, C, H, W, Ho, Wo, P,
                  NT, n_bb_x, chunks_x, SR: tl.constexpr, TRAINING: tl.constexpr, BB_X: tl.constexpr,
                  BLOCK_X: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """grad_x of a (channel, sample block, BLOCK_X input positions) chunk, gathering du over the
    <= ceil(KS/SR)^2 outputs whose window covers each input pixel (no scatter, no atomics)."""
    KS: tl.constexpr = SR + 3
    PAD: tl.constexpr = KS // 2
    T: tl.constexpr = (KS + SR - 1) // SR
    chunk = pid % chunks_x
    bb = (pid // chunks_x) % n_bb_x
    c = pid // (chunks_x * n_bb_x)
    scale, shift, slope, mean1, r1 = _du_coefficients(part_ptr, stats_ptr, g1_ptr, eps1, c, B, C, Ho, Wo, P, NT,
                                                      TRAINING, BLOCK_P, ACC)
    b = bb * BB_X + tl.arange(0, BB_X)[:, None]
    q = chunk * BLOCK_X + tl.arange(0, BLOCK_X)[None, :]
    valid = (b < B) & (q < H * W)
    h = q // W
    w = q % W
    acc = tl.zeros([BB_X, BLOCK_X], ACC)
    for th in tl.static_range(T):
        oh = (h + PAD) // SR - th
        i = h + PAD - oh * SR
        row_ok = valid & (oh >= 0) & (oh < Ho) & (i < KS)
        for tw in tl.static_range(T):
            ow = (w + PAD) // SR - tw
            j = w + PAD - ow * SR
            ok = row_ok & (ow >= 0) & (ow < Wo) & (j < KS)
            du = _load_du(dmap_ptr, u_ptr, _map_offsets(b, c, oh, ow, C, Ho, Wo), ok, scale, shift, slope, mean1,
                          r1, TRAINING, ACC)
            acc += du * tl.load(w1_ptr + c * KS * KS + i * KS + j, mask=ok, other=0.0).to(ACC)
    tl.store(gx_ptr + (b.to(tl.int64) * C + c) * H * W + q, acc.to(gx_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _grad_conv1_partial(pid, x_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, eps1, B, C, H, W, Ho, Wo, P, NT,
                        SR: tl.constexpr, TRAINING: tl.constexpr, NS: tl.constexpr, KKP: tl.constexpr,
                        BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Partial p of the channel's grad conv1 (slot NS + i*KS + j = sum du * x[tap (i, j)]): the channel's
    B*Ho*Wo outputs split into P equal ranges, each read as [BLOCK_E positions, KKP taps] tiles (the x window
    of each output), reduced over positions once per tile."""
    KS: tl.constexpr = SR + 3
    PAD: tl.constexpr = KS // 2
    p = pid % P
    c = pid // P
    scale, shift, slope, mean1, r1 = _du_coefficients(part_ptr, stats_ptr, g1_ptr, eps1, c, B, C, Ho, Wo, P, NT,
                                                      TRAINING, BLOCK_P, ACC)
    taps = tl.arange(0, KKP)
    ti = (taps // KS)[None, :]
    tj = (taps % KS)[None, :]
    tap_ok = (taps < KS * KS)[None, :]
    n = B * Ho * Wo
    per = tl.cdiv(n, P)
    end = tl.minimum((p + 1) * per, n)
    acc = tl.zeros([KKP], ACC)
    for e0 in range(p * per, end, BLOCK_E):
        e = e0 + tl.arange(0, BLOCK_E)[:, None]
        ok = e < end
        b = e // (Ho * Wo)
        oh = (e % (Ho * Wo)) // Wo
        ow = e % Wo
        du = _load_du(dmap_ptr, u_ptr, _map_offsets(b, c, oh, ow, C, Ho, Wo), ok, scale, shift, slope, mean1, r1,
                      TRAINING, ACC)
        ih = oh * SR - PAD + ti
        iw = ow * SR - PAD + tj
        in_x = ok & tap_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.load(x_ptr + (b.to(tl.int64) * C + c) * H * W + ih * W + iw, mask=in_x, other=0.0)
        acc += tl.sum(du * xv.to(ACC), axis=0)
    tl.store(part_ptr + (c * P + p) * NT + NS + taps, acc, mask=taps < KS * KS)


@triton.jit
def _reduce_bwd_input(gx_ptr, x_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, w1_ptr, eps1,
                      B, C, H, W, Ho, Wo, P, NT, n_bb_x, chunks_x, n_dx,
                      SR: tl.constexpr, TRAINING: tl.constexpr, NS: tl.constexpr, KKP: tl.constexpr,
                      BLOCK_E: tl.constexpr, BB_X: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_P: tl.constexpr,
                      IS_FP64: tl.constexpr):
    """Backward through BN1's batch terms and the strided conv, two kinds of programs in one launch:
    pid < n_dx: a grad_x chunk; pid >= n_dx: a partial of grad conv1 (reduced by _reduce_bwd_finish)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    if pid < n_dx:
        _grad_x_chunk(pid, gx_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, w1_ptr, eps1, B, C, H, W, Ho, Wo, P,
                      NT, n_bb_x, chunks_x, SR, TRAINING, BB_X, BLOCK_X, BLOCK_P, ACC)
    else:
        _grad_conv1_partial(pid - n_dx, x_ptr, u_ptr, stats_ptr, dmap_ptr, part_ptr, g1_ptr, eps1, B, C, H, W, Ho,
                            Wo, P, NT, SR, TRAINING, NS, KKP, BLOCK_E, BLOCK_P, ACC)


@triton.jit
def _reduce_bwd_finish(part_ptr, gw1_ptr, gw3_ptr, gb3_ptr, gw2_ptr, gg1_ptr, gb1_ptr, gg2_ptr, gb2_ptr, P, NT,
                       KK: tl.constexpr, NS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
                       IS_FP64: tl.constexpr):
    """One program per channel: every partial slot summed over the channel's programs in index order, then
    scattered to the parameter gradients (each in its own dtype)."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    c = tl.program_id(0)
    slots = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_S], ACC)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        tile = tl.load(part_ptr + (c * P + offs[:, None]) * NT + slots[None, :],
                       mask=(offs[:, None] < P) & (slots[None, :] < NT), other=0.0)
        acc += tl.sum(tile, axis=0)
    # each store lands only the lanes of its slot range (pointer shifted so the lane index is the slot)
    tl.store(gb3_ptr + c + slots, acc.to(gb3_ptr.dtype.element_ty), mask=slots == 0)
    tl.store(gw3_ptr + c * 9 + slots - 1, acc.to(gw3_ptr.dtype.element_ty), mask=(slots >= 1) & (slots < 10))
    tl.store(gb2_ptr + c + slots - 10, acc.to(gb2_ptr.dtype.element_ty), mask=slots == 10)
    tl.store(gg2_ptr + c + slots - 11, acc.to(gg2_ptr.dtype.element_ty), mask=slots == 11)
    tl.store(gw2_ptr + c + slots - 12, acc.to(gw2_ptr.dtype.element_ty), mask=slots == 12)
    tl.store(gb1_ptr + c + slots - 13, acc.to(gb1_ptr.dtype.element_ty), mask=slots == 13)
    tl.store(gg1_ptr + c + slots - 14, acc.to(gg1_ptr.dtype.element_ty), mask=slots == 14)
    tl.store(gw1_ptr + c * KK + slots - NS, acc.to(gw1_ptr.dtype.element_ty), mask=(slots >= NS) & (slots < NT))
