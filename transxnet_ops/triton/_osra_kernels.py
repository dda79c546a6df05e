"""OSRA attention Triton kernels, flash-style: scores are recomputed tile by tile, never stored.

Layout: q (BH, N, D), k/v (BH, M, D) contiguous; bias addressed through (batch, head) strides that are 0
where it is broadcast. fp32 inputs use IEEE dots (no TF32), fp64 (interpreter/gradcheck) accumulates in fp64.
Every kernel casts `scale` to the accumulation type on entry: under torch.compile inductor passes a Python float
as an fp64 scalar, which would promote the loop-carried statistics to fp64 and fail to compile (issue 8).
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IS_FP32: tl.constexpr):
    if IS_FP32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(q, k_ptrs, kv_mask, bias_ptrs, offs_n, offs_m, N, M, scale,
            HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr):
    """scale * q k^T + bias for one (query block, key block) tile; keys past M are -inf."""
    k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
    s = _dot(q, tl.trans(k), IS_FP32).to((tl.float64 if IS_FP64 else tl.float32)) * scale
    if HAS_BIAS:
        s += tl.load(bias_ptrs, mask=(offs_n < N)[:, None] & (offs_m < M)[None, :], other=0.0).to(s.dtype)
    return tl.where((offs_m < M)[None, :], s, float("-inf"))


@triton.jit
def _attn_fwd(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr, N, M, D, H, scale,
              bias_sb, bias_sh, bias_sn,
              HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    scale = tl.cast(scale, tl.float64 if IS_FP64 else tl.float32)  # inductor passes Python floats as fp64
    bh = tl.program_id(1).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(q_ptr + bh * N * D + offs_n[:, None] * D + offs_d[None, :],
                mask=(offs_n < N)[:, None] & d_ok[None, :], other=0.0)
    acc_ty = (tl.float64 if IS_FP64 else tl.float32)
    m_i = tl.full([BLOCK_N], float("-inf"), dtype=acc_ty)
    l_i = tl.zeros([BLOCK_N], dtype=acc_ty)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_ty)
    bias_row = bias_ptr + (bh // H) * bias_sb + (bh % H) * bias_sh + offs_n[:, None] * bias_sn
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        kv_off = bh * M * D + offs_m[:, None] * D + offs_d[None, :]
        kv_mask = (offs_m < M)[:, None] & d_ok[None, :]
        s = _scores(q, k_ptr + kv_off, kv_mask, bias_row + offs_m[None, :], offs_n, offs_m, N, M, scale,
                    HAS_BIAS, IS_FP32, IS_FP64)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        v = tl.load(v_ptr + kv_off, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IS_FP32).to(acc_ty)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    n_ok = offs_n < N
    tl.store(out_ptr + bh * N * D + offs_n[:, None] * D + offs_d[None, :],
             (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + bh * N + offs_n, (m_i + tl.log(l_i)).to(lse_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _grad_scores(q, do, k_ptrs, v_ptrs, kv_mask, bias_ptrs, lse, delta, offs_n, offs_m, N, M, scale,
                 HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr):
    """(p, dS) of one tile: p = exp(s - lse), dS = p * (dO v^T - delta)."""
    s = _scores(q, k_ptrs, kv_mask, bias_ptrs, offs_n, offs_m, N, M, scale, HAS_BIAS, IS_FP32, IS_FP64)
    p = tl.exp(s - lse[:, None])
    v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    dp = _dot(do, tl.trans(v), IS_FP32).to(p.dtype)
    return p, p * (dp - delta[:, None])


@triton.jit
def _load_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, offs_n, offs_d, N, D):
    row_mask = (offs_n < N)[:, None] & (offs_d < D)[None, :]
    off = bh * N * D + offs_n[:, None] * D + offs_d[None, :]
    q = tl.load(q_ptr + off, mask=row_mask, other=0.0)
    do = tl.load(do_ptr + off, mask=row_mask, other=0.0)
    lse = tl.load(lse_ptr + bh * N + offs_n, mask=offs_n < N, other=0.0)
    delta = tl.load(delta_ptr + bh * N + offs_n, mask=offs_n < N, other=0.0)
    return q, do, lse, delta


@triton.jit
def _attn_bwd_dq(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, N, M, D, H, scale,
                 bias_sb, bias_sh, bias_sn,
                 HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    scale = tl.cast(scale, tl.float64 if IS_FP64 else tl.float32)  # inductor passes Python floats as fp64
    bh = tl.program_id(1).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q, do, lse, delta = _load_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, offs_n, offs_d, N, D)
    dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=(tl.float64 if IS_FP64 else tl.float32))
    bias_row = bias_ptr + (bh // H) * bias_sb + (bh % H) * bias_sh + offs_n[:, None] * bias_sn
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        kv_off = bh * M * D + offs_m[:, None] * D + offs_d[None, :]
        kv_mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
        _, ds = _grad_scores(q, do, k_ptr + kv_off, v_ptr + kv_off, kv_mask, bias_row + offs_m[None, :], lse, delta,
                             offs_n, offs_m, N, M, scale, HAS_BIAS, IS_FP32, IS_FP64)
        k = tl.load(k_ptr + kv_off, mask=kv_mask, other=0.0)
        dq += _dot(ds.to(k.dtype), k, IS_FP32).to(dq.dtype)
    tl.store(dq_ptr + bh * N * D + offs_n[:, None] * D + offs_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=(offs_n < N)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _attn_bwd_dkdv(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, N, M, D, H, scale,
                   bias_sb, bias_sh, bias_sn,
                   HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (b*h, key block), looping over every query block: dk, dv stay in registers."""
    scale = tl.cast(scale, tl.float64 if IS_FP64 else tl.float32)  # inductor passes Python floats as fp64
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_off = bh * M * D + offs_m[:, None] * D + offs_d[None, :]
    kv_mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
    acc_ty = (tl.float64 if IS_FP64 else tl.float32)
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_ty)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_ty)
    bias_base = bias_ptr + (bh // H) * bias_sb + (bh % H) * bias_sh
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        q, do, lse, delta = _load_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, offs_n, offs_d, N, D)
        p, ds = _grad_scores(q, do, k_ptr + kv_off, v_ptr + kv_off, kv_mask,
                             bias_base + offs_n[:, None] * bias_sn + offs_m[None, :], lse, delta,
                             offs_n, offs_m, N, M, scale, HAS_BIAS, IS_FP32, IS_FP64)
        p = tl.where((offs_n < N)[:, None], p, 0.0)  # padded query rows must not contribute
        ds = tl.where((offs_n < N)[:, None], ds, 0.0)
        dv += _dot(tl.trans(p).to(do.dtype), do, IS_FP32).to(acc_ty)
        dk += _dot(tl.trans(ds).to(q.dtype), q, IS_FP32).to(acc_ty)
    tl.store(dk_ptr + kv_off, (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + kv_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dbias(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dbias_ptr, N, M, D, H, scale,
                    bias_sb, bias_sh, bias_sn, Hb, pairs_b, pairs_h,
                    IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program per (bias slice, query block, key block): dS summed over the batch/heads the bias is
    broadcast over, in registers, stored once (no (B,H,N,M) buffer, no atomics)."""
    scale = tl.cast(scale, tl.float64 if IS_FP64 else tl.float32)  # inductor passes Python floats as fp64
    slice_id = tl.program_id(2).to(tl.int64)
    bb, hb = slice_id // Hb, slice_id % Hb
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=(tl.float64 if IS_FP64 else tl.float32))
    for pb in range(pairs_b):
        for ph in range(pairs_h):
            b = bb + pb  # pairs_b > 1 only when the bias batch is 1 (bb = 0); likewise for heads
            h = hb + ph
            bh = b * H + h
            q, do, lse, delta = _load_rows(q_ptr, do_ptr, lse_ptr, delta_ptr, bh, offs_n, offs_d, N, D)
            kv_off = bh * M * D + offs_m[:, None] * D + offs_d[None, :]
            kv_mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
            bias_ptrs = bias_ptr + b * bias_sb + h * bias_sh + offs_n[:, None] * bias_sn + offs_m[None, :]
            _, ds = _grad_scores(q, do, k_ptr + kv_off, v_ptr + kv_off, kv_mask, bias_ptrs, lse, delta,
                                 offs_n, offs_m, N, M, scale, True, IS_FP32, IS_FP64)
            acc += ds
    mask = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    tl.store(dbias_ptr + slice_id * N * M + offs_n[:, None] * M + offs_m[None, :],
             acc.to(dbias_ptr.dtype.element_ty), mask=mask)
