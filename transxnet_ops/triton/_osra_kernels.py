"""OSRA attention Triton kernels: softmax(q k^T * scale + bias) v with the scores recomputed, never stored.

Layouts. q/out/grad_out (B, H, N, D) and k/v (B, H, M, D) are read in place when each (b, h) slice is dense:
row-major (the contiguous layout) or column-major (`*_COLS`: tokens contiguous; TransXNet's q, k, v and grad_out
are transposed views of conv outputs); the (b, h) strides are free. The launcher copies anything else. The bias
(1|B, 1|H, N, M) is row-major per slice, with stride 0 along broadcast batch/head dims. Outputs and partial sums
are contiguous. D is a constexpr: with it, row offsets have known alignment and loads vectorise.

Numerics. Scores live in the log2 domain (exp2 is the native instruction); lse is stored in natural log. Every
float argument is cast to the accumulation type on entry (`_scale`): under torch.compile inductor passes Python
floats as fp64 scalars, and an fp64 scale used as is would promote the loop-carried statistics to fp64 (issue 8).
Dots: fp16/bf16 on tensor cores with fp32 accumulation; fp32 as tf32x3 (three TF32 tensor-core products, ~fp32
accuracy); fp64 (interpreter, gradcheck) exact.

Small key sets (M <= SMALL_M_MAX in osra.py; TransXNet has M = 49 -> BLOCK_M = 64)
--------------------------------------------------------------------------------
All keys of a (b, h) fit in one tile, so the forward is a plain softmax (no online rescaling). A program owns
(query block, head, batch chunk) and loops over its batches: the bias tile is loaded once per chunk, and N = 49
still yields enough programs.

The backward is one pass. A program owns a rectangle (query chunk of `blocks_per_chunk` query blocks) x (batch
chunk) of one head; per (query block, b) step it recomputes S and P = exp(S - lse) once, dP = dO V^T,
delta = rowsum(dO * O) as rowsum(P * dP) (equal, since O = P V; all keys are in the tile, so O is never read),
dS = P (dP - delta), and produces
  dq = scale dS K            complete (all keys are in the tile): written directly;
  dbias += dS                summed over the batch chunk in fp32 registers, written once per (chunk, h, query
                             block) as an fp32 partial (or per b when the bias is not broadcast over the batch);
  dk_b += scale dS^T Q, dv_b += P^T dO   summed over the query chunk.
Loop order, and why: the two reductions run over different axes (dbias over the batch, dk/dv over the queries), so
only one of them can stay in registers across the inner loop. The batch is the inner loop: the dbias and bias
tiles stay in registers, and the per-b dk/dv accumulators live in the program's own slice of the fp32 partial
buffer, read-modify-written (no other program touches it; the slice is small enough to stay in L2). With the
query loop inside instead, dk/dv and K/V would stay in registers but the dbias tiles would be read-modify-written:
BLOCK_N * M * 8 bytes per step against M * D * 16 for dk/dv, more for D < BLOCK_N / 2 (TransXNet's d = 24, 28),
and the bias tile would be reloaded every step. Partials (dbias per batch chunk, dk/dv per query chunk) are summed
in a fixed order by `_sum_slots`: deterministic, no atomics. The launcher sizes the chunks (osra.py). When a single
query block covers N, dk/dv are complete in registers and written directly.

Large key sets (M > SMALL_M_MAX): tiled online-softmax forward; backward in three tiled kernels (dq + delta,
dk/dv over query splits, dbias over batch chunks) whose partials go through the same fixed-order reduction.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ---------------------------------------------------------------------------------------------------- helpers
@triton.jit
def _scale(scale, scale_lo, IS_FP64: tl.constexpr):
    """The softmax scale in the accumulation type, whatever type the float arguments arrive in (fp32 from a
    Python float, fp64 from inductor). Python floats reach kernels rounded to fp32, so fp64 kernels also get
    scale_lo = scale - fp32(scale) and add it back (~48 bits)."""
    if IS_FP64:
        return tl.cast(scale, tl.float64) + tl.cast(scale_lo, tl.float64)
    return tl.cast(scale, tl.float32)


@triton.jit
def _dot(a, b, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr, acc=None):
    """a @ b (+ acc) with fp32 accumulation (fp64 for fp64)."""
    if IS_FP32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    if IS_FP64:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
    return tl.dot(a, b, acc, out_dtype=tl.float32)


@triton.jit
def _slice(ptr, b, h, sb, sh, VEC: tl.constexpr):
    """Start of the (b, h) slice. Strides arrive divided by VEC (a power of two dividing them all) so that the
    compiler knows the slice alignment and vectorises the loads."""
    return ptr + b * (sb * VEC) + h * (sh * VEC)


@triton.jit
def _offsets(rows, cols, ld, n_cols, COLS: tl.constexpr):
    """Element offsets of a tile in a dense (rows, n_cols) slice, row-major, or column-major (COLS) with leading
    dimension ld. Tensors with the same layout share these (and their masks) across the loops."""
    if COLS:
        return rows[:, None] + cols[None, :] * ld
    return rows[:, None] * n_cols + cols[None, :]


@triton.jit
def _key_mask(m_ok, IS_FP64: tl.constexpr):
    """0 for keys < M, -inf past M, as a (1, BLOCK_M) row: added to the scores, it masks without predicates."""
    return tl.where(m_ok, 0.0, float("-inf")).to(tl.float64 if IS_FP64 else tl.float32)[None, :]


@triton.jit
def _bias_log2(ptr, off, mask, key_mask, IS_FP64: tl.constexpr):
    """bias * log2(e) + key mask: the one tile added to q k^T * scale * log2(e)."""
    bias = tl.load(ptr + off, mask=mask, other=0.0)
    return bias.to(tl.float64 if IS_FP64 else tl.float32) * LOG2E + key_mask


@triton.jit
def _scores_log2(q, k, s_add, qk_scale, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr):
    """(q k^T * scale + bias) * log2(e) of one tile; s_add is the bias tile from _bias_log2, or the key mask alone."""
    return _dot(q, tl.trans(k), IS_FP32, IS_FP64).to(tl.float64 if IS_FP64 else tl.float32) * qk_scale + s_add


@triton.jit
def _softmax_grad(s_log2, lse, dp, delta, IS_FP64: tl.constexpr):
    """p = exp(S - lse) and dS = p (dP - delta) of one tile. Rows past N (q, dO, lse, delta loaded as 0) have
    finite p and dS = 0, and contribute nothing to dv = p^T dO: no row mask needed."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    p = tl.exp2(s_log2 - (lse.to(acc_ty) * LOG2E)[:, None])
    return p, p * (dp - delta[:, None])


@triton.jit
def _grad_scores(s_log2, lse, do, v, delta, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr):
    """_softmax_grad with dP = dO V^T."""
    dp = _dot(do, tl.trans(v), IS_FP32, IS_FP64).to(tl.float64 if IS_FP64 else tl.float32)
    return _softmax_grad(s_log2, lse, dp, delta, IS_FP64)


@triton.jit
def _scores_by_chunks(q_base, k_base, do_base, v_base, offs_n, offs_m, n_ok, m_ok, n_ld, m_ld, s_add, qk_scale,
                      D: tl.constexpr, Q_COLS: tl.constexpr, K_COLS: tl.constexpr, DO_COLS: tl.constexpr,
                      V_COLS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(S in the log2 domain, dP = dO V^T) of one tile, both dots summed over head-dim chunks of BLOCK_D in a loop:
    one chunk of q, k, dO and V is live at a time (SPLIT_D: fp32 with d > 64, whose tf32x3 dots hold every operand
    split in two, overflows the register file with whole rows)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    qk = tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_ty)
    dp = tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_ty)
    for start in range(0, D, BLOCK_D):
        offs_d = start + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q_mask = n_ok[:, None] & d_ok[None, :]
        kv_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + _offsets(offs_n, offs_d, n_ld, D, Q_COLS), mask=q_mask, other=0.0)
        k = tl.load(k_base + _offsets(offs_m, offs_d, m_ld, D, K_COLS), mask=kv_mask, other=0.0)
        qk = _dot(q, tl.trans(k), IS_FP32, IS_FP64, qk)
        do = tl.load(do_base + _offsets(offs_n, offs_d, n_ld, D, DO_COLS), mask=q_mask, other=0.0)
        v = tl.load(v_base + _offsets(offs_m, offs_d, m_ld, D, V_COLS), mask=kv_mask, other=0.0)
        dp = _dot(do, tl.trans(v), IS_FP32, IS_FP64, dp)
    return qk * qk_scale + s_add, dp


# ---------------------------------------------------------------------------------------------------- small M
@triton.jit
def _attn_fwd_small(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr,
                    q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, bias_sb, bias_sh,
                    B, H, N, M, N_LD, M_LD, scale, scale_lo, batch_chunk,
                    D: tl.constexpr, VEC: tl.constexpr,
                    Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, BIAS_PER_BATCH: tl.constexpr,
                    IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (query block, head, batch chunk): plain softmax over all M keys, one (b, h) after another."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    qk_scale = _scale(scale, scale_lo, IS_FP64) * LOG2E
    h = tl.cast(tl.program_id(1), tl.int64)
    b_lo = tl.program_id(2) * batch_chunk
    b_hi = tl.minimum(b_lo + batch_chunk, B)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok, m_ok, d_ok = offs_n < N, offs_m < M, offs_d < D
    q_mask = n_ok[:, None] & d_ok[None, :]
    kv_mask = m_ok[:, None] & d_ok[None, :]
    bias_mask = n_ok[:, None] & m_ok[None, :]
    bias_off = offs_n[:, None] * M + offs_m[None, :]
    bias_h = bias_ptr + h * bias_sh
    key_mask = _key_mask(m_ok, IS_FP64)
    shared_add = key_mask
    if HAS_BIAS and not BIAS_PER_BATCH:  # shared by the whole chunk: loaded once
        shared_add = _bias_log2(bias_h, bias_off, bias_mask, key_mask, IS_FP64)
    for b in range(b_lo, b_hi):
        b = tl.cast(b, tl.int64)
        q = tl.load(_slice(q_ptr, b, h, q_sb, q_sh, VEC) + _offsets(offs_n, offs_d, n_ld, D, Q_COLS),
                    mask=q_mask, other=0.0)
        k = tl.load(_slice(k_ptr, b, h, k_sb, k_sh, VEC) + _offsets(offs_m, offs_d, m_ld, D, K_COLS),
                    mask=kv_mask, other=0.0)
        v = tl.load(_slice(v_ptr, b, h, v_sb, v_sh, VEC) + _offsets(offs_m, offs_d, m_ld, D, V_COLS),
                    mask=kv_mask, other=0.0)
        s_add = shared_add
        if HAS_BIAS and BIAS_PER_BATCH:
            s_add = _bias_log2(bias_h + b * bias_sb, bias_off, bias_mask, key_mask, IS_FP64)
        s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
        row_max = tl.max(s, axis=1)
        p = tl.exp2(s - row_max[:, None])
        row_sum = tl.sum(p, axis=1)
        o = _dot(p.to(v.dtype), v, IS_FP32, IS_FP64).to(acc_ty) * (1.0 / row_sum)[:, None]
        bh = b * H + h
        tl.store(out_ptr + bh * N * D + _offsets(offs_n, offs_d, N, D, False), o.to(out_ptr.dtype.element_ty),
                 mask=q_mask)
        tl.store(lse_ptr + bh * N + offs_n, ((row_max + tl.log2(row_sum)) * LN2).to(lse_ptr.dtype.element_ty),
                 mask=n_ok)


@triton.jit
def _attn_bwd_small(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr,
                    dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
                    q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, do_sb, do_sh, bias_sb, bias_sh,
                    B, H, N, M, N_LD, M_LD, scale, scale_lo, batch_chunk, blocks_per_chunk,
                    D: tl.constexpr, VEC: tl.constexpr,
                    Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                    DO_COLS: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr,
                    BIAS_PER_BATCH: tl.constexpr,
                    KV_DIRECT: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (query chunk, head, batch chunk); see the module docstring.

    dq (B, H, N, D) in the input dtype. KV_DIRECT (one query block covers N): dk/dv are the (B, H, M, D) outputs;
    else fp32 partials (n_query_chunks, B, H, M, D), this program's slice read-modify-written across its query
    blocks. dbias: fp32 partials (n_batch_chunks, H, N, M), or (B, H, N, M) when BIAS_PER_BATCH.
    """
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    sm_scale = _scale(scale, scale_lo, IS_FP64)
    qk_scale = sm_scale * LOG2E
    q_chunk = tl.program_id(0)
    h = tl.cast(tl.program_id(1), tl.int64)
    b_chunk = tl.program_id(2)
    b_lo = b_chunk * batch_chunk
    b_hi = tl.minimum(b_lo + batch_chunk, B)
    blk_lo = q_chunk * blocks_per_chunk
    blk_hi = tl.minimum(blk_lo + blocks_per_chunk, tl.cdiv(N, BLOCK_N))
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok, d_ok = offs_m < M, offs_d < D
    kv_mask = m_ok[:, None] & d_ok[None, :]
    k_off = _offsets(offs_m, offs_d, m_ld, D, K_COLS)
    v_off = _offsets(offs_m, offs_d, m_ld, D, V_COLS)
    kv_out = _offsets(offs_m, offs_d, M, D, False)
    bias_h = bias_ptr + h * bias_sh
    key_mask = _key_mask(m_ok, IS_FP64)
    dkv_slice = tl.cast(q_chunk, tl.int64) * B * H * M * D  # this program's partial slice (unless KV_DIRECT)
    for blk in range(blk_lo, blk_hi):
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        q_mask = n_ok[:, None] & d_ok[None, :]
        bias_mask = n_ok[:, None] & m_ok[None, :]
        bias_off = offs_n[:, None] * M + offs_m[None, :]
        q_off = _offsets(offs_n, offs_d, n_ld, D, Q_COLS)
        do_off = _offsets(offs_n, offs_d, n_ld, D, DO_COLS)
        dbias = tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_ty)
        for b in range(b_lo, b_hi):
            b = tl.cast(b, tl.int64)
            bh = b * H + h
            q = tl.load(_slice(q_ptr, b, h, q_sb, q_sh, VEC) + q_off, mask=q_mask, other=0.0)
            k = tl.load(_slice(k_ptr, b, h, k_sb, k_sh, VEC) + k_off, mask=kv_mask, other=0.0)
            # The bias tile is reloaded per b (an L1/L2 hit when shared across the batch; bias_sb = 0) rather than
            # kept: beside the dbias sum it would pin a second fp32 score tile in registers across the loop.
            s_add = key_mask
            if HAS_BIAS:
                s_add = _bias_log2(bias_h + b * bias_sb, bias_off, bias_mask, key_mask, IS_FP64)
            s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
            do = tl.load(_slice(do_ptr, b, h, do_sb, do_sh, VEC) + do_off, mask=q_mask, other=0.0)
            lse = tl.load(lse_ptr + bh * N + offs_n, mask=n_ok, other=0.0)
            v = tl.load(_slice(v_ptr, b, h, v_sb, v_sh, VEC) + v_off, mask=kv_mask, other=0.0)
            p = tl.exp2(s - (lse.to(acc_ty) * LOG2E)[:, None])
            at = dkv_slice + bh * M * D + kv_out
            earlier = kv_mask & (blk > blk_lo)  # the chunk's first query block initialises its dk/dv slice
            if KV_DIRECT:
                dv = _dot(tl.trans(p).to(do.dtype), do, IS_FP32, IS_FP64)
                tl.store(dv_ptr + bh * M * D + kv_out, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)
            else:  # the sums so far are the dot's accumulator
                dv = _dot(tl.trans(p).to(do.dtype), do, IS_FP32, IS_FP64,
                          tl.load(dv_ptr + at, mask=earlier, other=0.0))
                tl.store(dv_ptr + at, dv, mask=kv_mask)
            dp = _dot(do, tl.trans(v), IS_FP32, IS_FP64).to(acc_ty)
            # delta = rowsum(dO * O) = rowsum(P * dP) (O = P V): from the tile in registers, O is never read
            ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])
            if BIAS_GRAD:
                if BIAS_PER_BATCH:
                    tl.store(dbias_ptr + bh * N * M + bias_off, ds.to(dbias_ptr.dtype.element_ty), mask=bias_mask)
                else:
                    dbias += ds
            ds = ds * sm_scale  # dq = scale dS K, dk = scale dS^T Q
            dq = _dot(ds.to(k.dtype), k, IS_FP32, IS_FP64)
            tl.store(dq_ptr + bh * N * D + _offsets(offs_n, offs_d, N, D, False), dq.to(dq_ptr.dtype.element_ty),
                     mask=q_mask)
            if KV_DIRECT:
                dk = _dot(tl.trans(ds).to(q.dtype), q, IS_FP32, IS_FP64)
                tl.store(dk_ptr + bh * M * D + kv_out, dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
            else:
                dk = _dot(tl.trans(ds).to(q.dtype), q, IS_FP32, IS_FP64,
                          tl.load(dk_ptr + at, mask=earlier, other=0.0))
                tl.store(dk_ptr + at, dk, mask=kv_mask)
        if BIAS_GRAD and not BIAS_PER_BATCH:
            tl.store(dbias_ptr + (tl.cast(b_chunk, tl.int64) * H + h) * N * M + bias_off,
                     dbias.to(dbias_ptr.dtype.element_ty), mask=bias_mask)
        # The next query block reads back the dk/dv slice this one wrote, possibly from other threads.
        tl.debug_barrier()


# ---------------------------------------------------------------------------------------------------- reduction
@triton.jit
def _sum_slots(part_ptr, out_ptr, part2_ptr, out2_ptr, E, n_slots, slot_stride, row_stride,
               HAS_SECOND: tl.constexpr, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    """out[r, e] = sum_{s < n_slots} part[r * row_stride + s * slot_stride + e], s in increasing order (fixed,
    deterministic); out is (R, E) contiguous. HAS_SECOND: the same for (part2, out2) (dk and dv in one launch)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    row = tl.cast(tl.program_id(1), tl.int64)
    offs = tl.cast(tl.program_id(0), tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < E
    src = row * row_stride + offs
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    acc2 = tl.zeros([BLOCK], dtype=acc_ty)
    for s in range(n_slots):
        at = src + tl.cast(s, tl.int64) * slot_stride
        acc += tl.load(part_ptr + at, mask=ok, other=0.0)
        if HAS_SECOND:
            acc2 += tl.load(part2_ptr + at, mask=ok, other=0.0)
    tl.store(out_ptr + row * E + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)
    if HAS_SECOND:
        tl.store(out2_ptr + row * E + offs, acc2.to(out2_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------- large M
@triton.jit
def _attn_fwd_tiled(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr,
                    q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, bias_sb, bias_sh,
                    H, N, M, N_LD, M_LD, scale, scale_lo,
                    D: tl.constexpr, VEC: tl.constexpr,
                    Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                    HAS_BIAS: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (batch, query block, head): online softmax over key blocks."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    qk_scale = _scale(scale, scale_lo, IS_FP64) * LOG2E
    b = tl.cast(tl.program_id(0), tl.int64)  # batch fastest: programs running together share the bias tiles
    h = tl.cast(tl.program_id(2), tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok, d_ok = offs_n < N, offs_d < D
    q_mask = n_ok[:, None] & d_ok[None, :]
    q = tl.load(_slice(q_ptr, b, h, q_sb, q_sh, VEC) + _offsets(offs_n, offs_d, n_ld, D, Q_COLS),
                mask=q_mask, other=0.0)
    k_base = _slice(k_ptr, b, h, k_sb, k_sh, VEC)
    v_base = _slice(v_ptr, b, h, v_sb, v_sh, VEC)
    bias_base = bias_ptr + b * bias_sb + h * bias_sh
    row_max = tl.full([BLOCK_N], float("-inf"), dtype=acc_ty)
    row_sum = tl.zeros([BLOCK_N], dtype=acc_ty)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_ty)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        kv_mask = m_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + _offsets(offs_m, offs_d, m_ld, D, K_COLS), mask=kv_mask, other=0.0)
        v = tl.load(v_base + _offsets(offs_m, offs_d, m_ld, D, V_COLS), mask=kv_mask, other=0.0)
        s_add = _key_mask(m_ok, IS_FP64)
        if HAS_BIAS:
            s_add = _bias_log2(bias_base, offs_n[:, None] * M + offs_m[None, :], n_ok[:, None] & m_ok[None, :],
                               s_add, IS_FP64)
        s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        p = tl.exp2(s - new_max[:, None])
        alpha = tl.exp2(row_max - new_max)  # 0 on the first block (row_max = -inf, new_max finite)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IS_FP32, IS_FP64).to(acc_ty)
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        row_max = new_max
    bh = b * H + h
    tl.store(out_ptr + bh * N * D + _offsets(offs_n, offs_d, N, D, False),
             (acc * (1.0 / row_sum)[:, None]).to(out_ptr.dtype.element_ty), mask=q_mask)
    tl.store(lse_ptr + bh * N + offs_n, ((row_max + tl.log2(row_sum)) * LN2).to(lse_ptr.dtype.element_ty),
             mask=n_ok)


@triton.jit
def _attn_bwd_dq_tiled(q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, do_ptr, lse_ptr, dq_ptr, delta_ptr,
                       q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, o_sb, o_sh, do_sb, do_sh, bias_sb, bias_sh,
                       H, N, M, N_LD, M_LD, scale, scale_lo,
                       D: tl.constexpr, VEC: tl.constexpr,
                       Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                       O_COLS: tl.constexpr, DO_COLS: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SPLIT_D: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (batch, query block x head-dim chunk, head): dq over all key blocks; also writes
    delta = rowsum(dO O) (B, H, N) for the dk/dv and dbias kernels. One head-dim chunk covers D unless SPLIT_D:
    then each program owns BLOCK_D columns of dq and sums the scores over chunks (_scores_by_chunks)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    sm_scale = _scale(scale, scale_lo, IS_FP64)
    qk_scale = sm_scale * LOG2E
    n_d_chunks: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D if SPLIT_D else 1
    b = tl.cast(tl.program_id(0), tl.int64)  # batch fastest: programs running together share the bias tiles
    h = tl.cast(tl.program_id(2), tl.int64)
    d_chunk = tl.program_id(1) % n_d_chunks
    bh = b * H + h
    offs_n = (tl.program_id(1) // n_d_chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = d_chunk * BLOCK_D + tl.arange(0, BLOCK_D)
    n_ok, d_ok = offs_n < N, offs_d < D
    q_mask = n_ok[:, None] & d_ok[None, :]
    q_base = _slice(q_ptr, b, h, q_sb, q_sh, VEC)
    do_base = _slice(do_ptr, b, h, do_sb, do_sh, VEC)
    o_base = _slice(out_ptr, b, h, o_sb, o_sh, VEC)
    if SPLIT_D:
        delta = tl.zeros([BLOCK_N], dtype=acc_ty)
        for start in range(0, D, BLOCK_D):
            offs_c = start + tl.arange(0, BLOCK_D)
            c_mask = n_ok[:, None] & (offs_c < D)[None, :]
            do = tl.load(do_base + _offsets(offs_n, offs_c, n_ld, D, DO_COLS), mask=c_mask, other=0.0)
            o = tl.load(o_base + _offsets(offs_n, offs_c, n_ld, D, O_COLS), mask=c_mask, other=0.0)
            delta += tl.sum(do.to(acc_ty) * o.to(acc_ty), axis=1)
        tl.store(delta_ptr + bh * N + offs_n, delta.to(delta_ptr.dtype.element_ty), mask=n_ok & (d_chunk == 0))
    else:
        q = tl.load(q_base + _offsets(offs_n, offs_d, n_ld, D, Q_COLS), mask=q_mask, other=0.0)
        do = tl.load(do_base + _offsets(offs_n, offs_d, n_ld, D, DO_COLS), mask=q_mask, other=0.0)
        o = tl.load(o_base + _offsets(offs_n, offs_d, n_ld, D, O_COLS), mask=q_mask, other=0.0)
        delta = tl.sum(do.to(acc_ty) * o.to(acc_ty), axis=1)
        tl.store(delta_ptr + bh * N + offs_n, delta.to(delta_ptr.dtype.element_ty), mask=n_ok)
    lse = tl.load(lse_ptr + bh * N + offs_n, mask=n_ok, other=0.0)
    k_base = _slice(k_ptr, b, h, k_sb, k_sh, VEC)
    v_base = _slice(v_ptr, b, h, v_sb, v_sh, VEC)
    bias_base = bias_ptr + b * bias_sb + h * bias_sh
    dq = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_ty)
    for start in range(0, M, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        kv_mask = m_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + _offsets(offs_m, offs_d, m_ld, D, K_COLS), mask=kv_mask, other=0.0)
        if not SPLIT_D:
            v = tl.load(v_base + _offsets(offs_m, offs_d, m_ld, D, V_COLS), mask=kv_mask, other=0.0)
        s_add = _key_mask(m_ok, IS_FP64)
        if HAS_BIAS:
            s_add = _bias_log2(bias_base, offs_n[:, None] * M + offs_m[None, :], n_ok[:, None] & m_ok[None, :],
                               s_add, IS_FP64)
        if SPLIT_D:
            s, dp = _scores_by_chunks(q_base, k_base, do_base, v_base, offs_n, offs_m, n_ok, m_ok, n_ld, m_ld,
                                      s_add, qk_scale, D, Q_COLS, K_COLS, DO_COLS, V_COLS, IS_FP32, IS_FP64,
                                      BLOCK_N, BLOCK_M, BLOCK_D)
            _, ds = _softmax_grad(s, lse, dp, delta, IS_FP64)
        else:
            s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
            _, ds = _grad_scores(s, lse, do, v, delta, IS_FP32, IS_FP64)
        dq += _dot(ds.to(k.dtype), k, IS_FP32, IS_FP64).to(acc_ty)
    tl.store(dq_ptr + bh * N * D + _offsets(offs_n, offs_d, N, D, False),
             (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _attn_bwd_dkdv_tiled(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                         q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, do_sb, do_sh, bias_sb, bias_sh,
                         B, H, N, M, N_LD, M_LD, scale, scale_lo, blocks_per_split,
                         D: tl.constexpr, VEC: tl.constexpr,
                         Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                         DO_COLS: tl.constexpr, HAS_BIAS: tl.constexpr, KV_DIRECT: tl.constexpr,
                         SPLIT_D: tl.constexpr, IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (query split * batch, key block x head-dim chunk, head): dk, dv of the key block summed over the
    split's query blocks in registers; written to the outputs (KV_DIRECT: one split) or to fp32 partials
    (splits, B, H, M, D). SPLIT_D: each program owns BLOCK_D columns of dk/dv (see _attn_bwd_dq_tiled)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    sm_scale = _scale(scale, scale_lo, IS_FP64)
    qk_scale = sm_scale * LOG2E
    n_d_chunks: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D if SPLIT_D else 1
    b = tl.cast(tl.program_id(0) % B, tl.int64)  # batch fastest: programs running together share the bias tiles
    split = tl.program_id(0) // B
    h = tl.cast(tl.program_id(2), tl.int64)
    bh = b * H + h
    offs_m = (tl.program_id(1) // n_d_chunks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = (tl.program_id(1) % n_d_chunks) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_ok, d_ok = offs_m < M, offs_d < D
    kv_mask = m_ok[:, None] & d_ok[None, :]
    k_base = _slice(k_ptr, b, h, k_sb, k_sh, VEC)
    v_base = _slice(v_ptr, b, h, v_sb, v_sh, VEC)
    if not SPLIT_D:
        k = tl.load(k_base + _offsets(offs_m, offs_d, m_ld, D, K_COLS), mask=kv_mask, other=0.0)
        v = tl.load(v_base + _offsets(offs_m, offs_d, m_ld, D, V_COLS), mask=kv_mask, other=0.0)
    q_base = _slice(q_ptr, b, h, q_sb, q_sh, VEC)
    do_base = _slice(do_ptr, b, h, do_sb, do_sh, VEC)
    bias_base = bias_ptr + b * bias_sb + h * bias_sh
    dk = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_ty)
    dv = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_ty)
    blk_lo = split * blocks_per_split
    blk_hi = tl.minimum(blk_lo + blocks_per_split, tl.cdiv(N, BLOCK_N))
    for blk in range(blk_lo, blk_hi):
        offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        q_mask = n_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + _offsets(offs_n, offs_d, n_ld, D, Q_COLS), mask=q_mask, other=0.0)
        do = tl.load(do_base + _offsets(offs_n, offs_d, n_ld, D, DO_COLS), mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + bh * N + offs_n, mask=n_ok, other=0.0)
        delta = tl.load(delta_ptr + bh * N + offs_n, mask=n_ok, other=0.0).to(acc_ty)
        s_add = _key_mask(m_ok, IS_FP64)
        if HAS_BIAS:
            s_add = _bias_log2(bias_base, offs_n[:, None] * M + offs_m[None, :], n_ok[:, None] & m_ok[None, :],
                               s_add, IS_FP64)
        if SPLIT_D:
            s, dp = _scores_by_chunks(q_base, k_base, do_base, v_base, offs_n, offs_m, n_ok, m_ok, n_ld, m_ld,
                                      s_add, qk_scale, D, Q_COLS, K_COLS, DO_COLS, V_COLS, IS_FP32, IS_FP64,
                                      BLOCK_N, BLOCK_M, BLOCK_D)
            p, ds = _softmax_grad(s, lse, dp, delta, IS_FP64)
        else:
            s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
            p, ds = _grad_scores(s, lse, do, v, delta, IS_FP32, IS_FP64)
        dv += _dot(tl.trans(p).to(do.dtype), do, IS_FP32, IS_FP64).to(acc_ty)
        dk += _dot(tl.trans(ds).to(q.dtype), q, IS_FP32, IS_FP64).to(acc_ty)
    out_off = bh * M * D + _offsets(offs_m, offs_d, M, D, False)
    if not KV_DIRECT:
        out_off += tl.cast(split, tl.int64) * B * H * M * D
    tl.store(dk_ptr + out_off, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + out_off, dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dbias_tiled(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dbias_ptr,
                          q_sb, q_sh, k_sb, k_sh, v_sb, v_sh, do_sb, do_sh, bias_sb, bias_sh,
                          B, H, N, M, N_LD, M_LD, scale, scale_lo, batch_chunk,
                          D: tl.constexpr, VEC: tl.constexpr,
                          Q_COLS: tl.constexpr, K_COLS: tl.constexpr, V_COLS: tl.constexpr,
                          DO_COLS: tl.constexpr, BIAS_PER_BATCH: tl.constexpr, SPLIT_D: tl.constexpr,
                          IS_FP32: tl.constexpr, IS_FP64: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program = (query block x key block, head, batch chunk): dS summed over the chunk in registers, written as
    an fp32 partial (n_batch_chunks, H, N, M), or per b ((B, H, N, M)) when BIAS_PER_BATCH. SPLIT_D: the scores
    are summed over head-dim chunks of BLOCK_D (_scores_by_chunks)."""
    acc_ty = tl.float64 if IS_FP64 else tl.float32
    n_ld, m_ld = N_LD * VEC, M_LD * VEC  # column-major leading dims (N, M), alignment known
    qk_scale = _scale(scale, scale_lo, IS_FP64) * LOG2E
    n_key_blocks = tl.cdiv(M, BLOCK_M)
    h = tl.cast(tl.program_id(1), tl.int64)
    b_chunk = tl.program_id(2)
    offs_n = (tl.program_id(0) // n_key_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = (tl.program_id(0) % n_key_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok, m_ok, d_ok = offs_n < N, offs_m < M, offs_d < D
    q_mask = n_ok[:, None] & d_ok[None, :]
    kv_mask = m_ok[:, None] & d_ok[None, :]
    bias_mask = n_ok[:, None] & m_ok[None, :]
    bias_off = offs_n[:, None] * M + offs_m[None, :]
    bias_h = bias_ptr + h * bias_sh
    key_mask = _key_mask(m_ok, IS_FP64)
    shared_add = key_mask
    if not BIAS_PER_BATCH:
        shared_add = _bias_log2(bias_h, bias_off, bias_mask, key_mask, IS_FP64)
    dbias = tl.zeros([BLOCK_N, BLOCK_M], dtype=acc_ty)
    b_lo = b_chunk * batch_chunk
    for b in range(b_lo, tl.minimum(b_lo + batch_chunk, B)):
        b = tl.cast(b, tl.int64)
        bh = b * H + h
        q_base = _slice(q_ptr, b, h, q_sb, q_sh, VEC)
        k_base = _slice(k_ptr, b, h, k_sb, k_sh, VEC)
        v_base = _slice(v_ptr, b, h, v_sb, v_sh, VEC)
        do_base = _slice(do_ptr, b, h, do_sb, do_sh, VEC)
        lse = tl.load(lse_ptr + bh * N + offs_n, mask=n_ok, other=0.0)
        delta = tl.load(delta_ptr + bh * N + offs_n, mask=n_ok, other=0.0).to(acc_ty)
        s_add = shared_add
        if BIAS_PER_BATCH:
            s_add = _bias_log2(bias_h + b * bias_sb, bias_off, bias_mask, key_mask, IS_FP64)
        if SPLIT_D:
            s, dp = _scores_by_chunks(q_base, k_base, do_base, v_base, offs_n, offs_m, n_ok, m_ok, n_ld, m_ld,
                                      s_add, qk_scale, D, Q_COLS, K_COLS, DO_COLS, V_COLS, IS_FP32, IS_FP64,
                                      BLOCK_N, BLOCK_M, BLOCK_D)
            _, ds = _softmax_grad(s, lse, dp, delta, IS_FP64)
        else:
            q = tl.load(q_base + _offsets(offs_n, offs_d, n_ld, D, Q_COLS), mask=q_mask, other=0.0)
            do = tl.load(do_base + _offsets(offs_n, offs_d, n_ld, D, DO_COLS), mask=q_mask, other=0.0)
            k = tl.load(k_base + _offsets(offs_m, offs_d, m_ld, D, K_COLS), mask=kv_mask, other=0.0)
            v = tl.load(v_base + _offsets(offs_m, offs_d, m_ld, D, V_COLS), mask=kv_mask, other=0.0)
            s = _scores_log2(q, k, s_add, qk_scale, IS_FP32, IS_FP64)
            _, ds = _grad_scores(s, lse, do, v, delta, IS_FP32, IS_FP64)
        if BIAS_PER_BATCH:
            tl.store(dbias_ptr + bh * N * M + bias_off, ds.to(dbias_ptr.dtype.element_ty), mask=bias_mask)
        else:
            dbias += ds
    if not BIAS_PER_BATCH:
        tl.store(dbias_ptr + (tl.cast(b_chunk, tl.int64) * H + h) * N * M + bias_off,
                 dbias.to(dbias_ptr.dtype.element_ty), mask=bias_mask)
