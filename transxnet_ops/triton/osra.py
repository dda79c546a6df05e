"""OSRA attention Triton launchers, registered as custom ops (contract of csrc/osra/attn.h):
  transxnet_ops::osra_attention_triton(q, k, v, bias?, scale) -> (out, lse)
  transxnet_ops::osra_attention_backward_triton(grad_out, q, k, v, bias?, out, lse, scale, bias_requires_grad)
      -> (grad_q, grad_k, grad_v, grad_bias)
q (B, H, N, D), k/v (B, H, M, D), bias (1|B, 1|H, N, M) or None; lse fp32 (fp64 for fp64 inputs) (B, H, N);
grad_bias has the bias's shape (summed over its broadcast dims), or is empty when not requested. Inputs of any
layout are read through their strides. Autograd is registered in transxnet_ops/ops.py.

Kernels (_osra_kernels.py) and the regime each serves:
  forward, M <= SMALL_M_MAX: `_attn_fwd_small` (all keys in one tile, plain softmax); above: `_attn_fwd_tiled`
  (online softmax over key blocks).
  backward, M <= ONE_PASS_M_MAX and d <= ONE_PASS_D_MAX (TransXNet): the one-pass `_attn_bwd_small`, whose fp32
  partials (dk/dv per query chunk, dbias per batch chunk) `_sum_slots` reduces in a fixed order; above:
  `_attn_bwd_dq_tiled` (+ delta), `_attn_bwd_dkdv_tiled` and `_attn_bwd_dbias_tiled`, reduced the same way.

Work split. The one-pass backward trades parallelism against partial-sum traffic: a program covering (query
chunk) x (batch chunk) writes one dbias partial per batch chunk (N * M fp32 per head) and one dk/dv partial per
query chunk (2 * B * M * D fp32 per head). `_pick_split` chooses the chunk sizes with a small model: at least two
programs per SM when the problem allows it, then the least (waves x bytes per program), bytes counting the
partials twice (written, then read by the reduction). Sizes are plain Python ints computed from the shapes by
comparisons; under torch.compile with dynamic shapes the model sees power-of-two buckets of the sizes, so it
guards on buckets rather than on exact values. The SM count is read at call time (132 off-GPU).
"""
import struct
from typing import NamedTuple, Optional

import torch
import triton

from .._fakes import osra_attention_backward_fake, osra_attention_fake
from ._osra_kernels import (_attn_bwd_dbias_tiled, _attn_bwd_dkdv_tiled, _attn_bwd_dq_tiled, _attn_bwd_small,
                            _attn_fwd_small, _attn_fwd_tiled, _sum_slots)
from ._register import kernel_op, launch

SMALL_M_MAX = 128     # forward: every key in one tile up to here (TransXNet: M = 49 -> BLOCK_M = 64)
ONE_PASS_M_MAX = 64   # backward: one pass up to here, with d <= ONE_PASS_D_MAX, d % 4 == 0 (register budget)
ONE_PASS_D_MAX = 28
MAX_HEAD_DIM = 256  # one tile spans the head dim
_TILED_BLOCK_M = 64
_REDUCE_BLOCK = 1024
_OFF_GPU_SMS = 132  # interpreter / meta tensors: an H100/H200


# ---------------------------------------------------------------------------------------------------- shapes
def _pow2_ceil(n, cap):
    """min(cap, next power of two >= n) by comparisons only (SymInt-friendly: guards on a bucket)."""
    p = 1
    while p < cap and p < n:
        p *= 2
    return p


def _model_size(n):
    """A plain int for the cost model: n itself when concrete, its power-of-two bucket when symbolic."""
    return n if isinstance(n, int) else _pow2_ceil(n, 1 << 40)


def _chunk_sizes(limit):
    """1, 2, 3, 4, 6, 8, 12, ... (powers of two and 1.5x them) up to `limit`, then `limit` itself."""
    sizes, p = [], 1
    while p < limit:
        sizes.append(p)
        if 3 * p // 2 > p and 3 * p // 2 < limit:
            sizes.append(3 * p // 2)
        p *= 2
    return sorted(set(sizes + [limit]))


def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _OFF_GPU_SMS


def _pick_split(options, sms):
    """options: (programs, bytes, choice). At least 2 programs per SM if any option has them, then the fewest
    waves x bytes-per-program; ties go to more programs."""
    def cost(option):
        programs, nbytes, _ = option
        waves = -(-programs // sms)
        return (programs < 2 * sms, waves * nbytes / programs, -programs)
    return min(options, key=cost)[2]


def _tiles(M, D, one_tile):
    """BLOCK_N query rows per step; BLOCK_M covers every key (one_tile) or 64 of them; BLOCK_D the head dim."""
    block_d = max(16, _pow2_ceil(D, MAX_HEAD_DIM))
    block_m = max(16, _pow2_ceil(M, SMALL_M_MAX)) if one_tile else _TILED_BLOCK_M
    block_n = 64 if block_m * block_d <= 64 * 64 else 32
    return dict(BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d)


def _launch_options(kernel, dtype, D):
    """Warps, pipeline stages and, where they differ from _tiles, block sizes per kernel: the spill-free choices of
    the sm_90 register study (benchmarks/osra_triton_sm90.py). fp32 runs tf32x3, whose split operands take twice
    the registers: shorter steps, and above d = 64 the tiled backward sums its scores over head-dim chunks of 64
    (SPLIT_D; dq and dk/dv programs own 64 columns each)."""
    fp32 = dtype == torch.float32
    split = dict(SPLIT_D=False)
    if fp32 and D <= 32:  # the TransXNet head dims: unpipelined forward and dbias; dq on 32-key steps
        return {"fwd": dict(num_warps=4, num_stages=1),
                "dq": dict(BLOCK_M=32, num_warps=4, num_stages=2, **split),
                "dkdv": dict(BLOCK_N=16, num_warps=4, num_stages=1, **split),
                "dbias": dict(num_warps=8, num_stages=1, **split)}[kernel]
    if fp32 and D <= 64:
        return {"fwd": dict(BLOCK_N=16, num_warps=4, num_stages=1),
                "dq": dict(BLOCK_N=32, num_warps=8, num_stages=1, **split),
                "dkdv": dict(BLOCK_N=16, BLOCK_M=32, num_warps=4, num_stages=1, **split),
                "dbias": dict(BLOCK_N=64, BLOCK_M=32, num_warps=8, num_stages=1, **split)}[kernel]
    if fp32:
        split = dict(SPLIT_D=True, BLOCK_D=64)
        return {"fwd": dict(BLOCK_N=16, BLOCK_M=32, num_warps=4, num_stages=1),
                "dq": dict(BLOCK_N=16, BLOCK_M=32, num_warps=4, num_stages=1, **split),
                "dkdv": dict(BLOCK_N=16, BLOCK_M=32, num_warps=4, num_stages=1, **split),
                "dbias": dict(BLOCK_N=32, BLOCK_M=64, num_warps=8, num_stages=1, SPLIT_D=True, BLOCK_D=32)}[kernel]
    return dict(num_warps=8 if D > 64 else 4, num_stages=3, **({} if kernel == "fwd" else split))


def _head_dim_chunks(D, kmeta):
    """Programs along the head dim of a tiled backward kernel: BLOCK_D columns each when SPLIT_D, else one."""
    return -(-D // kmeta["BLOCK_D"]) if kmeta.get("SPLIT_D") else 1


def _forward_config(M, D, dtype):
    """All keys in one tile while the (BLOCK_M x BLOCK_D) K and V tiles fit the register budget alongside the
    scores (halved for fp32, whose tf32x3 operands are split in two); online softmax over key blocks above."""
    one_tile = _tiles(M, D, True)
    budget = 64 * 32 if dtype == torch.float32 else 128 * 32
    small = M <= SMALL_M_MAX and one_tile["BLOCK_M"] * one_tile["BLOCK_D"] <= budget
    return small, one_tile if small else _tiles(M, D, False)


def _backward_config(M, D, dtype, q_cols):
    """The one-pass kernel keeps S/P, dP/dS and the dbias sum (64 x BLOCK_M fp32 each) in registers: the sm_90
    study finds it spill-free (8 warps, unpipelined) for 16-bit inputs with BLOCK_M <= 64 and d in {8, ..., 28} a
    multiple of 4 (TransXNet-T), except fp16 at d <= 24 (16-48 B where bf16 is clean): pipelined there for
    row-major q (loads staged in shared memory), 32-query steps for column-major q. d = 32 in the model's
    column-major layout and odd d (unvectorised loads: TransXNet-B's 19, 21) spill, and fp32 (tf32x3 splits every
    operand) is over budget: those take the tiled kernels. fp64 (interpreter, gradcheck) follows the 16-bit choice.
    The one-pass cfg carries its warps and stages; the tiled kernels' come from _launch_options."""
    one_pass = M <= ONE_PASS_M_MAX and D <= ONE_PASS_D_MAX and D % 4 == 0 and dtype != torch.float32
    cfg = _tiles(M, D, one_pass)
    if one_pass:
        cfg.update(num_warps=8, num_stages=1)  # 4 warps spill at every studied d
        if dtype == torch.float16 and D <= 24:
            cfg.update(dict(BLOCK_N=32) if q_cols else dict(num_stages=2))
    return one_pass, cfg


def _split_scale(scale):
    """(scale rounded to fp32, the rest): Python floats reach kernels as fp32; fp64 kernels add the rest back."""
    hi = struct.unpack("f", struct.pack("f", scale))[0]
    return hi, scale - hi


def _dtype_flags(dtype):
    return dict(IS_FP32=dtype == torch.float32, IS_FP64=dtype == torch.float64)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _slice_layout(t):
    """"rows" when each (b, h) slice is dense row-major, "cols" when dense column-major (the model's transposed
    views), else None. Size-1 dims do not constrain the layout."""
    _, _, R, C = t.shape
    s_r, s_c = t.stride(2), t.stride(3)
    if (C == 1 or s_c == 1) and (R == 1 or s_r == C):
        return "rows"
    if (R == 1 or s_r == 1) and (C == 1 or s_c == R):
        return "cols"
    return None


def _dense_slices(t):
    """(t, cols): t itself when its slices are row- or column-major (cols), else a contiguous copy."""
    layout = _slice_layout(t)
    if layout is None:
        return t.contiguous(), False
    return t, layout == "cols"


def _bias_slices(bias):
    """bias with dense row-major (N, M) slices (a copy if needed, e.g. a bias expanded along N)."""
    if bias is None:
        return None
    _, _, N, M = bias.shape
    if (M == 1 or bias.stride(3) == 1) and (N == 1 or bias.stride(2) == M):
        return bias
    return bias.contiguous()


def _bh_strides(t):
    """(batch, head) strides, 0 along broadcast (size-1) dims; zeros when t is None."""
    if t is None:
        return 0, 0
    return (0 if t.shape[0] == 1 else t.stride(0)), (0 if t.shape[1] == 1 else t.stride(1))


class _Operands(NamedTuple):
    """q/k/v/out/grad_out as the kernels read them: dense slices, layout flags, strides in units of `vec`."""
    t: dict      # name -> tensor
    args: dict   # name -> (batch stride, head stride) // vec
    cols: dict   # name -> column-major slices
    vec: int     # a power of two dividing every (b, h) stride and column-major leading dim, <= 16 bytes
    lds: tuple   # (N // vec, M // vec): column-major leading dims in units of vec

    def meta(self, D):
        return dict(D=int(D), VEC=self.vec, **{f"{n.upper()}_COLS": c for n, c in self.cols.items()})


def _operands(N, M, **named):
    """named: q/o/do (B, H, N, D) and k/v (B, H, M, D) tensors."""
    t, cols = {}, {}
    for name, x in named.items():
        t[name], cols[name] = _dense_slices(x)
    elem = next(iter(t.values())).element_size()
    must_divide = [s for x in t.values() for s in _bh_strides(x)]
    must_divide += [N if name in ("q", "o", "do") else M for name, c in cols.items() if c]
    vec = max(1, 16 // elem)
    while vec > 1 and any(x % vec != 0 for x in must_divide):
        vec //= 2
    args = {name: tuple(s // vec for s in _bh_strides(x)) for name, x in t.items()}
    return _Operands(t, args, cols, vec, (N // vec, M // vec))


def _bias_per_batch(bias):
    return bias is not None and bias.shape[0] != 1


def _check_head_dim(D):
    if D > MAX_HEAD_DIM:
        raise ValueError(f"osra_attention (triton backend): head_dim must be <= {MAX_HEAD_DIM}, got {D}; "
                         "use backend='cpu', 'cuda' or 'reference'")


# ---------------------------------------------------------------------------------------------------- forward
def _forward_batch_chunk(B, H, N, M, cfg, bias, elem_bytes, sms):
    """Batches per forward program (small path): enough programs, and the shared bias tile loaded by few."""
    B_, H_, N_, M_ = map(_model_size, (B, H, N, M))
    n_blocks = -(-N_ // cfg["BLOCK_N"])
    shared_bias = bias is not None and not _bias_per_batch(bias)
    options = []
    for chunk in _chunk_sizes(B_):
        n_chunks = -(-B_ // chunk)
        nbytes = B_ * H_ * N_ * (2 * cfg["BLOCK_D"] * elem_bytes + 4) + (
            n_chunks * H_ * N_ * M_ * elem_bytes if shared_bias else 0)
        options.append((n_blocks * H_ * n_chunks, nbytes, chunk))
    return _pick_split(options, sms)


def launch_forward(q, k, v, bias, scale, out, lse):
    """out, lse <- attention of q, k, v (+ bias); every element of out and lse written."""
    B, H, N, D = q.shape
    M = k.shape[2]
    small, cfg = _forward_config(M, D, q.dtype)
    cfg = {**cfg, **_launch_options("fwd", q.dtype, D)}
    ops = _operands(N, M, q=q, k=k, v=v)
    bias = _bias_slices(bias)
    args = (ops.t["q"], ops.t["k"], ops.t["v"], bias if bias is not None else q, out, lse,  # q: stand-in bias
            *ops.args["q"], *ops.args["k"], *ops.args["v"], *_bh_strides(bias))
    meta = dict(HAS_BIAS=bias is not None, **ops.meta(D), **_dtype_flags(q.dtype), **cfg)
    n_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    if small:
        chunk = _forward_batch_chunk(B, H, N, M, cfg, bias, q.element_size(), _num_sms(q.device))
        launch(_attn_fwd_small)[(n_blocks, H, triton.cdiv(B, chunk))](
            *args, B, H, N, M, *ops.lds, *_split_scale(scale), chunk, BIAS_PER_BATCH=_bias_per_batch(bias), **meta)
    else:
        launch(_attn_fwd_tiled)[(B, n_blocks, H)](*args, H, N, M, *ops.lds, *_split_scale(scale), **meta)


# ---------------------------------------------------------------------------------------------------- backward
class BackwardPlan(NamedTuple):
    one_pass: bool     # the one-pass kernel (else the tiled ones)
    cfg: dict
    query_chunk: int   # one pass: query blocks per program; tiled: query blocks per dk/dv split
    batch_chunk: int   # batches per program (one pass), per dbias program (tiled)
    kv_direct: bool    # dk/dv written by the main kernel (no partials)
    n_query_chunks: object  # int or SymInt
    n_batch_chunks: object


def backward_plan(q, k, bias, bias_requires_grad):
    B, H, N, D = q.shape
    M = k.shape[2]
    one_pass, cfg = _backward_config(M, D, q.dtype, _slice_layout(q) == "cols")
    sms = _num_sms(q.device)
    bias_grad = bias is not None and bias_requires_grad
    chunk_bias = bias_grad and not _bias_per_batch(bias)  # dbias partial per batch chunk (else per b)
    B_, H_, N_, M_, D_ = map(_model_size, (B, H, N, M, D))
    elem = q.element_size()
    n_blocks_ = -(-N_ // cfg["BLOCK_N"])
    kv_bytes = 2 * 2 * 4 * B_ * H_ * M_ * D_  # one dk/dv fp32 partial, written and read
    bias_bytes = 2 * 4 * H_ * N_ * M_          # one dbias fp32 partial, written and read
    if one_pass:
        kv_direct = N <= cfg["BLOCK_N"]
        useful = B_ * H_ * N_ * (3 * D_ * elem + 4)  # q, dO read, dq written, lse
        options = []
        for per_chunk in _chunk_sizes(n_blocks_):
            n_q = -(-n_blocks_ // per_chunk)
            for chunk in _chunk_sizes(B_):
                n_b = -(-B_ // chunk)
                partial_bias = chunk_bias and not (n_b == 1 and bias.shape[1] == H)  # else written directly
                nbytes = useful + (0 if kv_direct else n_q * kv_bytes) + (n_b * bias_bytes if partial_bias else 0)
                options.append((n_q * H_ * n_b, nbytes, (per_chunk, chunk)))
        query_chunk, batch_chunk = _pick_split(options, sms)
    else:
        n_key_blocks_ = -(-M_ // cfg["BLOCK_M"])
        reads = n_key_blocks_ * B_ * H_ * N_ * 2 * D_ * elem  # q and dO, once per key block
        kv_cfg = {**cfg, **_launch_options("dkdv", q.dtype, D)}  # the dk/dv splits count its own blocks
        kv_block_n = kv_cfg["BLOCK_N"]
        kv_blocks_ = -(-N_ // kv_block_n)
        kv_programs_ = -(-M_ // kv_cfg["BLOCK_M"]) * _head_dim_chunks(D_, kv_cfg) * H_ * B_
        options = []
        for per_split in _chunk_sizes(kv_blocks_):
            n_q = -(-kv_blocks_ // per_split)
            options.append((kv_programs_ * n_q, reads + (n_q * kv_bytes if n_q > 1 else 0), per_split))
        query_chunk = _pick_split(options, sms)
        kv_direct = N <= query_chunk * kv_block_n
        options = []
        for chunk in _chunk_sizes(B_):
            n_b = -(-B_ // chunk)
            programs = n_blocks_ * n_key_blocks_ * H_ * n_b
            options.append((programs, reads + (n_b * bias_bytes if chunk_bias else 0), chunk))
        batch_chunk = _pick_split(options, sms) if chunk_bias else 1
    split_blocks = triton.cdiv(N, cfg["BLOCK_N"] if one_pass else kv_block_n)
    return BackwardPlan(one_pass, cfg, query_chunk, batch_chunk, kv_direct,
                        triton.cdiv(split_blocks, query_chunk), triton.cdiv(B, batch_chunk))


def _dbias_direct(plan, bias, H):
    """grad_bias needs no reduction (one slot per output slice): the kernels write it, without partials."""
    return (_bias_per_batch(bias) or plan.n_batch_chunks == 1) and bias.shape[1] == H


def backward_workspace(plan, q, k, bias, bias_requires_grad):
    """fp32 (fp64 for fp64 inputs) buffers of the backward: dk/dv partials, dbias partials, delta (tiled)."""
    B, H, N, D = q.shape
    M = k.shape[2]
    acc = _acc_dtype(q.dtype)
    ws = {}
    if not plan.kv_direct:
        ws["dk"] = q.new_empty((plan.n_query_chunks, B, H, M, D), dtype=acc)
        ws["dv"] = q.new_empty((plan.n_query_chunks, B, H, M, D), dtype=acc)
    if bias is not None and bias_requires_grad and not _dbias_direct(plan, bias, H):
        slots = B if _bias_per_batch(bias) else plan.n_batch_chunks
        ws["dbias"] = q.new_empty((slots, H, N, M), dtype=acc)
    if not plan.one_pass:
        ws["delta"] = q.new_empty((B, H, N), dtype=acc)
    return ws


def _launch_sum(part, out, n_rows, n_slots, slot_stride, row_stride, part2=None, out2=None):
    E = out.numel() // n_rows
    launch(_sum_slots)[(triton.cdiv(E, _REDUCE_BLOCK), n_rows)](
        part, out, part2 if part2 is not None else part, out2 if out2 is not None else out,
        E, n_slots, slot_stride, row_stride, HAS_SECOND=part2 is not None,
        IS_FP64=part.dtype == torch.float64, BLOCK=_REDUCE_BLOCK)


def _reduce_grad_bias(part, grad_bias, B, H, N, M):
    """grad_bias (Bb, Hb, N, M) <- partials (slots, H, N, M), summed over the bias's broadcast dims in order."""
    Bb, Hb = grad_bias.shape[:2]
    slots = part.shape[0]
    NM = N * M
    if Hb == H:   # rows: (slot-row, h) pairs of the output; sum over chunks (shared) or nothing (per batch)
        rows, n_slots, slot_stride = (B * H, 1, 0) if Bb != 1 else (H, slots, H * NM)
        _launch_sum(part, grad_bias, rows, n_slots, slot_stride, NM)
    else:         # Hb == 1 < H: heads are summed too
        if Bb != 1:
            _launch_sum(part, grad_bias, B, H, NM, H * NM)
        else:
            _launch_sum(part, grad_bias, 1, slots * H, NM, 0)


def launch_backward(plan, grad_out, q, k, v, bias, out, lse, scale, grad_q, grad_k, grad_v, grad_bias, ws):
    """grad_q, grad_k, grad_v (and grad_bias unless None) <- gradients; workspace from backward_workspace."""
    B, H, N, D = q.shape
    M = k.shape[2]
    cfg = plan.cfg
    named = dict(q=q, k=k, v=v, do=grad_out) if plan.one_pass else dict(q=q, k=k, v=v, do=grad_out, o=out)
    ops = _operands(N, M, **named)
    t, st = ops.t, ops.args
    bias = _bias_slices(bias)
    lse = lse.contiguous()
    bias_grad = grad_bias is not None
    per_batch = _bias_per_batch(bias)
    dk, dv = (grad_k, grad_v) if plan.kv_direct else (ws["dk"], ws["dv"])
    dbias_direct = bias_grad and _dbias_direct(plan, bias, H)
    dbias = grad_bias if dbias_direct else ws["dbias"] if bias_grad else q
    bias_arg = bias if bias is not None else q
    qkv = (*st["q"], *st["k"], *st["v"])
    scales = (*ops.lds, *_split_scale(scale))
    meta = dict(**ops.meta(D), **_dtype_flags(q.dtype), **cfg)

    def options(kernel):
        return {**meta, **_launch_options(kernel, q.dtype, D)}

    def grid_blocks(kmeta, rows, block):  # row blocks x head-dim chunks, on one grid axis
        return triton.cdiv(rows, kmeta[block]) * _head_dim_chunks(D, kmeta)

    if plan.one_pass:
        launch(_attn_bwd_small)[(plan.n_query_chunks, H, plan.n_batch_chunks)](
            t["q"], t["k"], t["v"], bias_arg, t["do"], lse, grad_q, dk, dv, dbias,
            *qkv, *st["do"], *_bh_strides(bias), B, H, N, M, *scales, plan.batch_chunk, plan.query_chunk,
            HAS_BIAS=bias is not None, BIAS_GRAD=bias_grad, BIAS_PER_BATCH=per_batch, KV_DIRECT=plan.kv_direct,
            **meta)
    else:
        delta = ws["delta"]
        dq_meta = options("dq")
        launch(_attn_bwd_dq_tiled)[(B, grid_blocks(dq_meta, N, "BLOCK_N"), H)](
            t["q"], t["k"], t["v"], bias_arg, t["o"], t["do"], lse, grad_q, delta,
            *qkv, *st["o"], *st["do"], *_bh_strides(bias), H, N, M, *scales, HAS_BIAS=bias is not None, **dq_meta)
        meta.pop("O_COLS")
        kv_meta = options("dkdv")
        launch(_attn_bwd_dkdv_tiled)[(B * plan.n_query_chunks, grid_blocks(kv_meta, M, "BLOCK_M"), H)](
            t["q"], t["k"], t["v"], bias_arg, t["do"], lse, delta, dk, dv,
            *qkv, *st["do"], *_bh_strides(bias), B, H, N, M, *scales, plan.query_chunk,
            HAS_BIAS=bias is not None, KV_DIRECT=plan.kv_direct, **kv_meta)
        if bias_grad:
            n_chunks = B if per_batch else plan.n_batch_chunks
            db_meta = options("dbias")
            n_tiles = triton.cdiv(N, db_meta["BLOCK_N"]) * triton.cdiv(M, db_meta["BLOCK_M"])
            launch(_attn_bwd_dbias_tiled)[(n_tiles, H, n_chunks)](
                t["q"], t["k"], t["v"], bias, t["do"], lse, delta, dbias,
                *qkv, *st["do"], *_bh_strides(bias), B, H, N, M, *scales,
                1 if per_batch else plan.batch_chunk, BIAS_PER_BATCH=per_batch, **db_meta)
    if not plan.kv_direct:
        _launch_sum(ws["dk"], grad_k, 1, plan.n_query_chunks, B * H * M * D, 0, ws["dv"], grad_v)
    if bias_grad and not dbias_direct:
        _reduce_grad_bias(ws["dbias"], grad_bias, B, H, N, M)


# ---------------------------------------------------------------------------------------------------- ops
@kernel_op("transxnet_ops::osra_attention_triton", osra_attention_fake)
def osra_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    M = k.shape[2]
    _check_head_dim(D)
    out = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, N), device=q.device, dtype=_acc_dtype(q.dtype))
    if M == 0:  # softmax over no keys: nothing to average
        return out.zero_(), lse.fill_(float("-inf"))
    if out.numel() > 0 or lse.numel() > 0:
        launch_forward(q, k, v, bias, scale, out, lse)
    return out, lse


@kernel_op("transxnet_ops::osra_attention_backward_triton", osra_attention_backward_fake)
def osra_attention_backward_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   bias: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, scale: float,
                                   bias_requires_grad: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, N, D = q.shape
    M = k.shape[2]
    _check_head_dim(D)
    grad_q = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    grad_k = torch.empty((B, H, M, D), device=q.device, dtype=k.dtype)
    grad_v = torch.empty((B, H, M, D), device=q.device, dtype=v.dtype)
    bias_grad = bias is not None and bias_requires_grad
    grad_bias = torch.empty(bias.shape, device=q.device, dtype=bias.dtype) if bias_grad else q.new_empty(0)
    if B * H * N * M == 0:  # no scores: every gradient is zero (or empty)
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_(), grad_bias.zero_()
    plan = backward_plan(q, k, bias, bias_grad)
    ws = backward_workspace(plan, q, k, bias, bias_grad)
    launch_backward(plan, grad_out, q, k, v, bias, out, lse, scale, grad_q, grad_k, grad_v,
                    grad_bias if bias_grad else None, ws)
    return grad_q, grad_k, grad_v, grad_bias
