"""Launching the depthwise kernels (_depthwise_kernels.py) for IDConv and dwconv2d: size-bucketed configs,
segment grouping, and the forward / backward launch sequences. No op registration here (idconv.py, dwconv.py).

Every launch goes through `launch(kernel)[grid](...)` so that the kernel report and the GPU-compile test can
record it on meta tensors. The activations of a launch (x, y / grad_y, x, grad_x) are dense in one layout and
share x's strides: NCHW-contiguous, or channels_last (no copy to NCHW; tiles then span 8 channels, which sit
next to each other in memory, on 2-4 warps). `dense_activation` / `_fakes.empty_activation` give the callers those tensors.
"""
from typing import NamedTuple, Optional

import torch
import triton

from .._fakes import activation_format
from ._depthwise_kernels import _dw_bwd, _dw_fwd, _dw_fwd_direct, _dw_reduce_partials, _dw_wgrad_direct
from ._register import launch

# Largest kernel size of the register-window kernels: in backward K*K taps and K*K grad_weight accumulators live
# in registers (sm_90: 154 registers per thread at K = 7, 230 at K = 9, no spills); larger K takes the direct path.
REGISTER_WINDOW_MAX_K = 9
SEGMENTS_PER_LAUNCH = 4  # K0..K3 of _dw_fwd / _dw_bwd
# Static weights: samples per program are doubled while at least this many programs remain (132 SMs hold
# ~6-12 of these programs each), trading parallelism for weight reuse and fewer grad_weight partial rows.
TARGET_PROGRAMS = 2048
MAX_SAMPLES_PER_PROGRAM = 32
REDUCE_BLOCK = 256


class Segment(NamedTuple):
    c_start: int  # first channel
    c_count: int
    w_off: int  # first tap in the packed weight
    k: int


def segments_of(split_sizes, kernel_sizes):
    """The non-empty channel segments of a packed multi-scale weight (dwconv.h's layout)."""
    segs, c, off = [], 0, 0
    for n, k in zip(split_sizes, kernel_sizes):
        if n > 0:
            segs.append(Segment(c, n, off, k))
        c, off = c + n, off + n * k * k
    return segs


def _pow2_at_least(n, cap):
    """min(cap, next power of two >= n) by comparisons only: under torch.compile with dynamic shapes n is a
    SymInt, and this guards on a size bucket (e.g. n > 8) instead of specialising on n."""
    p = 1
    while p < cap and p < n:
        p *= 2
    return p


# Columns per thread (E) of the register window. The forward holds K*K taps, K*E accumulators and two windows
# of E + K - 1 inputs per thread; the backward adds K*K grad_weight accumulators and K*E rows of x, so its E
# is capped by K (sm_90, bf16: forward K = 7, E = 7: 166 registers; backward K = 7, E = 4: 241; K = 9, E = 1:
# 234; no spills).
MAX_COLUMNS_FWD = 8
MAX_COLUMNS_BWD = {1: 8, 3: 8, 5: 8, 7: 4}  # larger K: 1


# channels_last tiles: CL_CHANNELS channels (contiguous in memory: 16 bytes of bf16) x the NCHW tile's lanes per
# program, on CL_CHANNELS * LANES / 32 warps (the same threads per plane as NCHW).
CL_CHANNELS = 8


def dense_activation(t, x):
    """t (x itself, or grad_y) dense in x's activation layout: a no-op for NCHW- or channels_last-contiguous
    tensors; strided views (e.g. a channel slice of a channels_last tensor) are copied."""
    return t.contiguous(memory_format=activation_format(x))


def is_channels_last(x):
    return activation_format(x) == torch.channels_last


def window_config(W, k_max, backward, channels_last=False):
    """Register-window tile of a one-warp program: LANES threads along a row, each owning E consecutive columns
    (a row segment of LANES * E columns; wider maps loop over segments), and 32 // LANES planes (consecutive
    channels), one [BLOCK_P, LANES] element per thread. E + K - 1 loads per row feed E*K*K FMAs, so E grows up
    to its register cap before more lanes are used. TransXNet, K = 7: W = 56 -> 8 lanes x 7 columns forward,
    16 x 4 backward; 28 -> 8 x 4; 14 -> 8 x 2; 7 -> 8 x 1 (four 7x7 planes per warp)."""
    e_max = MAX_COLUMNS_BWD.get(k_max, 1) if backward else MAX_COLUMNS_FWD
    lanes = _pow2_at_least(W, 8)
    cols = 1
    while cols < e_max and lanes * cols < W:
        cols += 1
    while lanes * cols < W and lanes < 32:  # wide maps: more lanes, then row segments
        lanes *= 2
        cols = min(e_max, max(1, -(-W // lanes)))
    if channels_last:  # CL_CHANNELS adjacent channels per column (contiguous in memory), as many threads per plane
        return dict(E=cols, LANES=lanes, BLOCK_P=CL_CHANNELS, num_warps=max(1, CL_CHANNELS * lanes // 32),
                    num_stages=1)
    return dict(E=cols, LANES=lanes, BLOCK_P=32 // lanes, num_warps=1, num_stages=1)


def direct_config(H, W):
    """Direct-path tile (large K): up to 256 outputs on up to 4 warps (two per thread: K accumulators each)."""
    block_w = _pow2_at_least(W, 32)
    block_h = _pow2_at_least(H, max(1, 256 // block_w))
    return dict(BLOCK_H=block_h, BLOCK_W=block_w, num_warps=max(1, min(4, block_h * block_w // 64)))


def samples_per_program(B, n_blocks):
    """Static weights: a power-of-two chunk of samples per program, as large as keeps >= TARGET_PROGRAMS."""
    nb = 1
    while nb < MAX_SAMPLES_PER_PROGRAM and nb < B and n_blocks * ((B + 2 * nb - 1) // (2 * nb)) >= TARGET_PROGRAMS:
        nb *= 2
    return nb


def _is_window(seg):
    return seg.k <= REGISTER_WINDOW_MAX_K


def _k_max(group):
    return max(s.k for s in group)


def _groups(segments):
    """Register-window segments, heaviest first, SEGMENTS_PER_LAUNCH per launch; direct-path segments alone."""
    window = sorted([s for s in segments if _is_window(s)], key=lambda s: -s.k)
    return ([window[i:i + SEGMENTS_PER_LAUNCH] for i in range(0, len(window), SEGMENTS_PER_LAUNCH)],
            [s for s in segments if not _is_window(s)])


def _segment_args(group, block_p, n_chunks):
    """Runtime (C_START, C_COUNT, W_OFF, PID_END) x 4 and constexpr K0..K3, NSEG; returns (args, consts, grid)."""
    args, consts, end = [], {}, 0
    for i in range(SEGMENTS_PER_LAUNCH):
        if i < len(group):
            seg = group[i]
            end = end + triton.cdiv(seg.c_count, block_p) * n_chunks
            args += [seg.c_start, seg.c_count, seg.w_off, end]
            consts[f"K{i}"] = seg.k
        else:
            args += [0, 0, 0, end]
            consts[f"K{i}"] = 1
    consts["NSEG"] = len(group)
    return args, consts, end


def chunking(x, segments, per_sample):
    """(samples per program, number of sample chunks): per-sample weights take one sample per program."""
    B, _, _, W = x.shape
    if per_sample:
        return 1, B
    block_p = window_config(W, 1, backward=False, channels_last=is_channels_last(x))["BLOCK_P"]
    n_blocks = sum(triton.cdiv(s.c_count, block_p) if _is_window(s) else s.c_count for s in segments)
    nb = samples_per_program(B, n_blocks)
    return nb, triton.cdiv(B, nb)


def _strides(x, *others):
    """The launch's shared activation strides (x's; the others must match where their sizes exceed 1)."""
    for t in others:
        assert all(n == 1 or a == b for n, a, b in zip(x.shape, x.stride(), t.stride())), "layouts differ"
    return tuple(x.stride())


def forward(x, weight, bias, y, segments, per_sample):
    """y <- bias + x (*) weight for every segment. per_sample: IDConv's (B, C, K, K) weight and (B, C) bias.
    x and y dense in one layout (see the module docstring)."""
    B, C, H, W = x.shape
    strides = _strides(x, y)
    channels_last = is_channels_last(x)
    is_fp64 = x.dtype == torch.float64
    nb, n_chunks = chunking(x, segments, per_sample)
    bias_arg = bias if bias is not None else x  # x stands in for the absent bias pointer
    window, direct = _groups(segments)
    for group in window:
        cfg = window_config(W, _k_max(group), backward=False, channels_last=channels_last)
        args, consts, grid = _segment_args(group, cfg["BLOCK_P"], n_chunks)
        launch(_dw_fwd)[(grid,)](x, weight, bias_arg, y, B, C, H, W, *strides, nb, *args, **consts, PER_SAMPLE=per_sample,
                                 HAS_BIAS=bias is not None, IS_FP64=is_fp64, **cfg)
    dcfg = direct_config(H, W)
    for seg in direct:
        launch(_dw_fwd_direct)[(n_chunks * seg.c_count,)](
            x, weight, bias_arg, y, B, C, H, W, *strides, nb, seg.c_start, seg.c_count, seg.w_off, K=seg.k, FLIP=False,
            PER_SAMPLE=per_sample, HAS_BIAS=bias is not None, IS_FP64=is_fp64, **dcfg)


def partial_buffer(x, taps, n_chunks):
    """fp32 (fp64 for float64) grad_weight / grad_bias partials of static weights: one row per sample chunk."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty(n_chunks, taps + x.shape[1], device=x.device, dtype=acc)


def backward(grad_y, x, weight, grad_x, grad_weight, grad_bias, segments, per_sample,
             partial: Optional[torch.Tensor] = None):
    """grad_x, grad_weight and grad_bias (None: not wanted; static weights only) of forward(). The fused kernel
    writes IDConv's weight gradients directly; static ones go through `partial` (allocated if not given) and are
    summed over the sample chunks in a fixed order."""
    B, C, H, W = x.shape
    strides = _strides(x, grad_y, grad_x)
    channels_last = is_channels_last(x)
    is_fp64 = x.dtype == torch.float64
    taps = weight.numel()
    nb, n_chunks = chunking(x, segments, per_sample)
    if per_sample:
        part = x  # unused pointer
        gw, gb = grad_weight, grad_bias
    else:
        part = partial_buffer(x, taps, n_chunks) if partial is None else partial
        gw = gb = x  # unused pointers
    window, direct = _groups(segments)
    for group in window:
        cfg = window_config(W, _k_max(group), backward=True, channels_last=channels_last)
        args, consts, grid = _segment_args(group, cfg["BLOCK_P"], n_chunks)
        launch(_dw_bwd)[(grid,)](grad_y, x, weight, grad_x, gw, gb, part, B, C, H, W, *strides, nb, taps, taps + C, *args,
                                 **consts, PER_SAMPLE=per_sample, IS_FP64=is_fp64, **cfg)
    dcfg = direct_config(H, W)
    for seg in direct:
        grid = (n_chunks * seg.c_count,)
        launch(_dw_fwd_direct)[grid](grad_y, weight, x, grad_x, B, C, H, W, *strides, nb, seg.c_start, seg.c_count, seg.w_off,
                                     K=seg.k, FLIP=True, PER_SAMPLE=per_sample, HAS_BIAS=False, IS_FP64=is_fp64,
                                     **dcfg)
        launch(_dw_wgrad_direct)[grid](grad_y, x, gw, gb, part, B, C, H, W, *strides, nb, seg.c_start, seg.c_count,
                                       seg.w_off, taps, taps + C, K=seg.k, PER_SAMPLE=per_sample, IS_FP64=is_fp64, **dcfg)
    if not per_sample:
        launch(_dw_reduce_partials)[(triton.cdiv(taps + C, REDUCE_BLOCK),)](
            part, grad_weight, grad_bias if grad_bias is not None else grad_weight, n_chunks, taps, taps + C,
            HAS_GB=grad_bias is not None, IS_FP64=is_fp64, BLOCK=REDUCE_BLOCK, num_warps=4)
