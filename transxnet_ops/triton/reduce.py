"""OSRA reduce-path Triton launchers, registered as custom ops with the contract of the C++ ops
(csrc/reduce/reduce.h):
  transxnet_ops::osra_reduce_triton(x, conv1_weight, bn1 weight/bias/running_mean/running_var, conv2_weight,
      bn2 ..., local_weight, local_bias, sr_ratio, eps1, eps2, training, save_u) -> (out, u, stats)
  transxnet_ops::osra_reduce_backward_triton(grad_out, x, u, stats, conv1_weight, bn1_weight, bn1_bias,
      conv2_weight, bn2_weight, bn2_bias, local_weight, local_bias, sr_ratio, eps1, eps2, training) -> 9 grads
Launches: eval forward 1, training forward 3, eval backward 3, training backward 4 (see _reduce_kernels.py).
Inputs are checked by transxnet_ops.reduce; autograd is registered in transxnet_ops.ops.
"""
import torch
import triton

from .._fakes import osra_reduce_backward_fake, osra_reduce_fake
from . import _reduce_kernels as rk
from ._register import kernel_op, launch

_MAX_REGION = 256  # positions of one map tile (with halo): a whole 7x7 .. 16x16 map, else 32-wide strips
_TILE_ELEMS = 512  # samples x positions per program (T1: 384 programs for 132 SMs)
_BLOCK_P = 16  # partials combined per step


def _pow2_at_least(n, cap=1 << 30):
    p = 1
    while p < cap and p < n:
        p *= 2
    return p


def reduced_size(size, sr_ratio):
    k = sr_ratio + 3
    return (size + 2 * (k // 2) - k) // sr_ratio + 1


class _MapTiling:
    """Tiles of the (Ho, Wo) map, with a 1-pixel halo where a tile does not span the dimension (`halo`)."""

    def __init__(self, B, Ho, Wo, halo):
        h = 1 if halo else 0
        if Ho * Wo <= _MAX_REGION:  # the whole map in one tile: its neighbours are all in the tile
            TH, TW, halo_h, halo_w = Ho, Wo, 0, 0
        else:
            TW = Wo if Wo <= 32 else 32 - 2 * h
            halo_w = h if TW < Wo else 0
            rows = _MAX_REGION // (TW + 2 * halo_w)
            TH, halo_h = (Ho, 0) if rows >= Ho else (rows - 2 * h, h)
        self.TH, self.TW, self.HALO_H, self.HALO_W = TH, TW, halo_h, halo_w
        self.R = _pow2_at_least((TH + 2 * halo_h) * (TW + 2 * halo_w))
        self.BB = _pow2_at_least(B, max(1, _TILE_ELEMS // self.R))
        self.n_bb = triton.cdiv(B, self.BB)
        self.tiles_w = triton.cdiv(Wo, TW)
        self.n_tiles = triton.cdiv(Ho, TH) * self.tiles_w
        self.P = self.n_bb * self.n_tiles  # programs (and partials) per channel

    def grid(self, C):
        return (C * self.P,)

    def args(self):
        return (self.n_bb, self.tiles_w, self.n_tiles, self.TH, self.TW)

    def constexprs(self, with_halo=False):
        kw = dict(BB=self.BB, R=self.R)
        if with_halo:
            kw.update(HALO_H=self.HALO_H, HALO_W=self.HALO_W)
        return kw


def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _warps(elems):
    return 4 if elems >= 512 else 2 if elems >= 128 else 1


@kernel_op("transxnet_ops::osra_reduce_triton", osra_reduce_fake)
def osra_reduce_triton(x: torch.Tensor, conv1_weight: torch.Tensor, bn1_weight: torch.Tensor, bn1_bias: torch.Tensor,
                       bn1_running_mean: torch.Tensor, bn1_running_var: torch.Tensor, conv2_weight: torch.Tensor,
                       bn2_weight: torch.Tensor, bn2_bias: torch.Tensor, bn2_running_mean: torch.Tensor,
                       bn2_running_var: torch.Tensor, local_weight: torch.Tensor, local_bias: torch.Tensor,
                       sr_ratio: int, eps1: float, eps2: float, training: bool,
                       save_u: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    w1, w3 = conv1_weight.contiguous(), local_weight.contiguous()
    B, C, H, W = x.shape
    Ho, Wo = reduced_size(H, sr_ratio), reduced_size(W, sr_ratio)
    out = x.new_empty(B, C, Ho, Wo)
    u = x.new_empty(B, C, Ho, Wo) if training or save_u else x.new_empty(0)
    stats = x.new_empty(6, C, dtype=_acc_dtype(x))
    if training and B * Ho * Wo <= 1:
        raise ValueError(f"osra_reduce: BatchNorm training needs more than 1 value per channel, got "
                         f"B * Ho * Wo = {B * Ho * Wo}")
    if B * C == 0:  # no kernel runs: the stats rows are what the kernels would write (eval: running stats)
        if training:
            return out, u, stats.zero_()
        return out, u, torch.stack([bn1_running_mean, bn1_running_var, bn1_running_var, bn2_running_mean,
                                    bn2_running_var, bn2_running_var]).to(stats.dtype)
    is_fp64 = x.dtype == torch.float64
    part2, P2 = stats, 0  # (eval: unused)
    if training:
        plain = _MapTiling(B, Ho, Wo, halo=False)
        part1 = x.new_empty(C, plain.P, 3, dtype=_acc_dtype(x))
        part2, P2 = torch.empty_like(part1), plain.P
        warps = _warps(plain.BB * plain.R)
        launch(rk._reduce_fwd_stats1)[plain.grid(C)](
            x, w1, u, part1, B, C, H, W, Ho, Wo, *plain.args(), SR=sr_ratio, IS_FP64=is_fp64, num_warps=warps,
            **plain.constexprs())
        launch(rk._reduce_fwd_stats2)[plain.grid(C)](
            u, stats, part1, part2, bn1_weight, bn1_bias, conv2_weight, eps1, B, C, Ho, Wo, *plain.args(),
            BLOCK_P=_BLOCK_P, IS_FP64=is_fp64, num_warps=warps, **plain.constexprs())
    tiling = _MapTiling(B, Ho, Wo, halo=True)
    launch(rk._reduce_fwd_out)[tiling.grid(C)](
        x, u, out, stats, part2, w1, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight,
        bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var, w3, local_bias, eps1, eps2,
        B, C, H, W, Ho, Wo, *tiling.args(), P2, SR=sr_ratio, TRAINING=training, SAVE_U=save_u,
        BLOCK_P=_BLOCK_P, IS_FP64=is_fp64, num_warps=_warps(tiling.BB * tiling.R), **tiling.constexprs(True))
    return out, u, stats


@kernel_op("transxnet_ops::osra_reduce_backward_triton", osra_reduce_backward_fake)
def osra_reduce_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, u: torch.Tensor, stats: torch.Tensor,
                                conv1_weight: torch.Tensor, bn1_weight: torch.Tensor, bn1_bias: torch.Tensor,
                                conv2_weight: torch.Tensor, bn2_weight: torch.Tensor, bn2_bias: torch.Tensor,
                                local_weight: torch.Tensor, local_bias: torch.Tensor, sr_ratio: int, eps1: float,
                                eps2: float, training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, x, u, stats = grad_out.contiguous(), x.contiguous(), u.contiguous(), stats.contiguous()
    w1, w3 = conv1_weight.contiguous(), local_weight.contiguous()
    B, C, H, W = x.shape
    Ho, Wo = grad_out.shape[2:]
    KS = sr_ratio + 3
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format)
             for t in (x, conv1_weight, bn1_weight, bn1_bias, conv2_weight, bn2_weight, bn2_bias, local_weight,
                       local_bias)]
    if B * C == 0:
        return tuple([grads[0]] + [g.zero_() for g in grads[1:]])
    gx, gw1, gg1, gb1, gw2, gg2, gb2, gw3, gb3 = grads
    is_fp64 = x.dtype == torch.float64
    tiling = _MapTiling(B, Ho, Wo, halo=False)
    NT = rk.NS + KS * KS
    part = x.new_empty(C, tiling.P, NT, dtype=_acc_dtype(x))
    dmap = x.new_empty(B, C, Ho, Wo, dtype=_acc_dtype(x))
    warps = _warps(tiling.BB * tiling.R)
    common = (stats, dmap, part, bn1_weight, bn1_bias, conv2_weight, bn2_weight, bn2_bias)
    launch(rk._reduce_bwd_map)[tiling.grid(C)](
        grad_out, u, *common, w3, eps1, eps2, B, C, Ho, Wo, *tiling.args(), NT, TRAINING=training,
        IS_FP64=is_fp64, num_warps=warps, **tiling.constexprs())
    if training:
        launch(rk._reduce_bwd_bn2)[tiling.grid(C)](
            u, *common, eps1, eps2, B, C, Ho, Wo, *tiling.args(), NT, BLOCK_P=_BLOCK_P, IS_FP64=is_fp64,
            num_warps=warps, **tiling.constexprs())
    block_x = _pow2_at_least(H * W, 256)
    bb_x = _pow2_at_least(B, max(1, _TILE_ELEMS // block_x))
    n_bb_x, chunks_x = triton.cdiv(B, bb_x), triton.cdiv(H * W, block_x)
    n_dx = C * n_bb_x * chunks_x
    kkp = _pow2_at_least(KS * KS)
    launch(rk._reduce_bwd_input)[(n_dx + C * tiling.P,)](
        gx, x, u, stats, dmap, part, bn1_weight, w1, eps1, B, C, H, W, Ho, Wo, tiling.P, NT, n_bb_x, chunks_x, n_dx,
        SR=sr_ratio, TRAINING=training, NS=rk.NS, KKP=kkp, BLOCK_E=max(1, _TILE_ELEMS // kkp), BB_X=bb_x,
        BLOCK_X=block_x, BLOCK_P=_BLOCK_P, IS_FP64=is_fp64, num_warps=_warps(bb_x * block_x))
    launch(rk._reduce_bwd_finish)[(C,)](
        part, gw1, gw3, gb3, gw2, gg1, gb1, gg2, gb2, tiling.P, NT, KK=KS * KS, NS=rk.NS,
        BLOCK_S=_pow2_at_least(NT), BLOCK_P=_BLOCK_P, IS_FP64=is_fp64, num_warps=4)
    return gx, gw1, gg1, gb1, gw2, gg2, gb2, gw3, gb3
