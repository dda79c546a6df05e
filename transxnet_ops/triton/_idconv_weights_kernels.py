"""IDConv weight-generation Triton kernels (@triton.jit only; launchers in idconv_weights.py).

A slot q of a (sample, channel) is one kernel tap or the bias: with PACKED logits (B, G*C, K+1, K+1) the slots are
the (K+1)^2 positions (taps at [:K, :K], bias at [K, K], the rest unused); otherwise the K*K taps of the
(B, G*C, K, K) logits, then (HAS_BIAS) slot K*K read from the (B, G*C) bias logits. Tiles are [GP, BB, BQ]
(groups padded to a power of two x samples x slots); the softmax over groups is an axis-0 reduction in fp32
(fp64 for float64). Logits are read through their strides, so a sliced proj output needs no copy.
"""
import triton
import triton.language as tl


@triton.jit
def _slots(q, K: tl.constexpr, PACKED: tl.constexpr, HAS_BIAS: tl.constexpr):
    """slot index -> (row, col in the logits, is a tap, is the bias, tap index)."""
    if PACKED:
        kh = q // (K + 1)
        kw = q % (K + 1)
        is_tap = (kh < K) & (kw < K)
        is_bias = (kh == K) & (kw == K) & HAS_BIAS
    else:
        kh = q // K
        kw = q % K
        is_tap = q < K * K
        is_bias = (q == K * K) & HAS_BIAS
    return kh, kw, is_tap, is_bias, kh * K + kw


@triton.jit
def _softmax_mix(l_ptr, lb_ptr, w_ptr, bias_ptr, c, g, b, kh, kw, is_tap, is_bias, tap, B, C,
                 s_b, s_gc, s_h, s_w, sb_b, sb_gc, G: tl.constexpr, K: tl.constexpr, PACKED: tl.constexpr,
                 ACC: tl.constexpr):
    """For groups g [GP, 1, 1], samples b [1, BB, 1] and slots [1, 1, BQ]: the softmax over groups
    p [GP, BB, BQ], the group parameters [GP, 1, BQ] and their mix sum_g p * param [BB, BQ]."""
    gc = g * C + c
    g_ok = g < G
    ptrs = l_ptr + b.to(tl.int64) * s_b + gc * s_gc + kh * s_h + kw * s_w
    if not PACKED:
        ptrs = tl.where(is_bias, lb_ptr + b.to(tl.int64) * sb_b + gc * sb_gc, ptrs)
    logits = tl.load(ptrs, mask=g_ok & (b < B) & (is_tap | is_bias), other=0.0).to(ACC)
    logits = tl.where(g_ok, logits, float("-inf"))  # padded groups get probability 0
    e = tl.exp(logits - tl.max(logits, axis=0)[None, :, :])
    p = e / tl.sum(e, axis=0)[None, :, :]
    param = tl.load(w_ptr + gc * (K * K) + tap, mask=g_ok & is_tap, other=0.0).to(ACC)
    param += tl.load(bias_ptr + gc + tap * 0, mask=g_ok & is_bias, other=0.0).to(ACC)
    return p, param, tl.sum(p * param, axis=0)


@triton.jit
def _idconv_weights_fwd(l_ptr, lb_ptr, w_ptr, bias_ptr, out_w_ptr, out_b_ptr, B, C,
                        s_b, s_gc, s_h, s_w, sb_b, sb_gc, NQ, n_qblocks, n_bblocks,
                        G: tl.constexpr, GP: tl.constexpr, K: tl.constexpr, PACKED: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BB: tl.constexpr, BQ: tl.constexpr, IS_FP64: tl.constexpr):
    """One program per (channel, slot block, sample block): weight_out and bias_out of its slots."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    bblock = pid % n_bblocks
    qblock = (pid // n_bblocks) % n_qblocks
    c = pid // (n_bblocks * n_qblocks)
    q = qblock * BQ + tl.arange(0, BQ)
    kh, kw, is_tap, is_bias, tap = _slots(q, K, PACKED, HAS_BIAS)
    is_tap = is_tap & (q < NQ)
    is_bias = is_bias & (q < NQ)
    b = bblock * BB + tl.arange(0, BB)
    g = tl.arange(0, GP)[:, None, None]
    _, _, mixed = _softmax_mix(l_ptr, lb_ptr, w_ptr, bias_ptr, c, g, b[None, :, None], kh[None, None, :],
                               kw[None, None, :], is_tap[None, None, :], is_bias[None, None, :], tap[None, None, :],
                               B, C, s_b, s_gc, s_h, s_w, sb_b, sb_gc, G, K, PACKED, ACC)
    b2 = b[:, None].to(tl.int64)
    b_ok = b2 < B
    tl.store(out_w_ptr + (b2 * C + c) * (K * K) + tap[None, :], mixed.to(out_w_ptr.dtype.element_ty),
             mask=b_ok & is_tap[None, :])
    tl.store(out_b_ptr + (b2 * C + c) + tap[None, :] * 0, mixed.to(out_b_ptr.dtype.element_ty),
             mask=b_ok & is_bias[None, :])


@triton.jit
def _idconv_weights_bwd(l_ptr, lb_ptr, w_ptr, bias_ptr, gw_out_ptr, gb_out_ptr, gl_ptr, glb_ptr, gw_ptr, gbias_ptr,
                        B, C, s_b, s_gc, s_h, s_w, sb_b, sb_gc, NQ, n_qblocks,
                        G: tl.constexpr, GP: tl.constexpr, K: tl.constexpr, PACKED: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BB: tl.constexpr, BQ: tl.constexpr, IS_FP64: tl.constexpr):
    """One program per (channel, slot block), looping over the batch in order: the logits' gradient
    p_g * d * (param_g - mix) and the parameters' gradient sum_b p_g * d, with no partial buffer."""
    ACC: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    KL: tl.constexpr = K + 1 if PACKED else K
    pid = tl.program_id(0)
    qblock = pid % n_qblocks
    c = pid // n_qblocks
    q = qblock * BQ + tl.arange(0, BQ)
    kh1, kw1, is_tap1, is_bias1, tap1 = _slots(q, K, PACKED, HAS_BIAS)
    in_range = (q < NQ)[None, None, :]
    is_tap1 = is_tap1 & (q < NQ)
    is_bias1 = is_bias1 & (q < NQ)
    kh, kw, tap = kh1[None, None, :], kw1[None, None, :], tap1[None, None, :]
    is_tap, is_bias = is_tap1[None, None, :], is_bias1[None, None, :]
    g = tl.arange(0, GP)[:, None, None]
    gc = g * C + c
    acc = tl.zeros([GP, BQ], ACC)
    for b0 in range(0, B, BB):
        b = b0 + tl.arange(0, BB)[None, :, None]
        p, param, mixed = _softmax_mix(l_ptr, lb_ptr, w_ptr, bias_ptr, c, g, b, kh, kw, is_tap, is_bias, tap, B, C,
                                       s_b, s_gc, s_h, s_w, sb_b, sb_gc, G, K, PACKED, ACC)
        b64 = b.to(tl.int64)
        b_ok = b < B
        d = tl.load(gw_out_ptr + (b64 * C + c) * (K * K) + tap, mask=b_ok & is_tap, other=0.0).to(ACC)
        d += tl.load(gb_out_ptr + (b64 * C + c) + tap * 0, mask=b_ok & is_bias, other=0.0).to(ACC)
        pd = p * d  # [GP, BB, BQ]; zero on unused slots, so their logit gradient is 0
        grad_logits = (pd * (param - mixed[None, :, :])).to(gl_ptr.dtype.element_ty)
        out = gl_ptr + (b64 * (G * C) + gc) * (KL * KL) + kh * KL + kw
        if PACKED:
            tl.store(out, grad_logits, mask=(g < G) & b_ok & in_range)
        else:
            tl.store(out, grad_logits, mask=(g < G) & b_ok & is_tap)
            tl.store(glb_ptr + b64 * (G * C) + gc + tap * 0, grad_logits, mask=(g < G) & b_ok & is_bias)
        acc += tl.sum(pd, axis=1)
    g2 = tl.arange(0, GP)[:, None]
    tl.store(gw_ptr + (g2 * C + c) * (K * K) + tap1[None, :], acc.to(gw_ptr.dtype.element_ty),
             mask=(g2 < G) & is_tap1[None, :])
    tl.store(gbias_ptr + g2 * C + c + tap1[None, :] * 0, acc.to(gbias_ptr.dtype.element_ty),
             mask=(g2 < G) & is_bias1[None, :])
