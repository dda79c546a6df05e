"""Drop-in modules: IDConv2d and OSRA (same parameters, buffers and state_dict keys as the official
DynamicConv2d and Attention) and the TransXNet building blocks around them.

Submodules that the official code builds with mmcv's ConvModule are ConvBN here: the same `conv` / `bn`
attribute names (and no conv bias when a BatchNorm follows), so official state_dicts load unchanged.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import backends, ops, pointwise, reduce
from .idconv_weights import idconv_weights
from .pooling import pool_with_mean


class ConvBN(nn.Sequential):
    """conv -> BatchNorm2d (-> GELU), laid out like mmcv's ConvModule with norm_cfg=BN2d."""

    def __init__(self, in_dim, out_dim, kernel_size=1, stride=1, padding=0, groups=1, act=False):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)
        if act:
            self.activate = nn.GELU()

    def forward(self, x):  # as nn.Sequential, with the eval BatchNorm folded into the conv (pointwise.conv_bn)
        x = pointwise.conv_bn(self.conv, self.bn, x)
        return self.activate(x) if hasattr(self, "activate") else x


class DWConv2d(nn.Conv2d):
    """Depthwise conv with the fused kernels: a drop-in for nn.Conv2d(dim, dim, k, padding=k//2, groups=dim)
    with the same parameters, initialisation and state_dict keys (weight (dim, 1, k, k), bias (dim,))."""

    def __init__(self, dim, kernel_size, bias=True, backend=None, device=None, dtype=None):
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding is kernel_size // 2), got {kernel_size}")
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias, device=device,
                         dtype=dtype)
        self.backend = backend

    @classmethod
    def from_conv(cls, conv, backend=None):
        """The fused twin of a stride-1, 'same'-padded depthwise nn.Conv2d, sharing its parameters."""
        if not is_same_depthwise(conv):
            raise ValueError(f"not a stride-1 depthwise conv with padding k//2: {conv}")
        fused = cls(conv.in_channels, conv.kernel_size[0], bias=conv.bias is not None, backend=backend, device="meta")
        fused.weight, fused.bias = conv.weight, conv.bias
        return fused.train(conv.training)

    def forward(self, x):
        return ops.dwconv2d(x, self.weight, self.bias, backend=self.backend)


def is_same_depthwise(conv):
    """A plain nn.Conv2d that DWConv2d computes exactly: depthwise, square odd kernel, stride 1, padding k//2."""
    k = conv.kernel_size[0]
    return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels
            and conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding == (k // 2, k // 2) and conv.padding_mode == "zeros")


class IDConv2d(nn.Module):
    """Input-dependent depthwise conv (TransXNet's IDConv, official name DynamicConv2d).

    Per sample: pool x to KxK, two 1x1 convs, softmax over the G groups, weighted sum of G learnable KxK
    kernels -> one depthwise kernel per (sample, channel); likewise a dynamic bias from the global mean.
    The convolution itself is the fused `transxnet_ops.idconv`.

    As officially, `proj` (and so its BatchNorm) runs twice per forward: on the KxK pooled map, then on the
    global mean (bias=True only). In training both calls update the running statistics, in that order.
    """

    def __init__(self, dim, kernel_size=3, reduction_ratio=4, num_groups=2, bias=True, backend=None):
        super().__init__()
        if num_groups <= 1:
            raise ValueError(f"num_groups must be > 1 (as in the official DynamicConv2d), got {num_groups}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.num_groups = num_groups
        self.K = kernel_size
        self.reduction_ratio = reduction_ratio
        self.bias_type = bias
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.pool = nn.AdaptiveAvgPool2d(output_size=(kernel_size, kernel_size))  # kept for API parity
        self.proj = nn.Sequential(ConvBN(dim, dim // reduction_ratio, act=True),
                                  nn.Conv2d(dim // reduction_ratio, dim * num_groups, kernel_size=1))
        self.bias = nn.Parameter(torch.empty(num_groups, dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.trunc_normal_(self.bias, std=0.02)

    def dynamic_weight_and_bias(self, x):
        """The per-sample kernels (B, C, K, K) and bias (B, C) or None."""
        B, C = x.shape[:2]
        G, K = self.num_groups, self.K
        z = pool_with_mean(x, K)  # one pass over x: the KxK pool in z[..., :K, :K], the global mean at [K, K]
        bn = self.proj[0].bn
        if not bn.training and bn.track_running_stats:
            # proj is per position in eval (BN affine): one GEMM chain serves the kernels and the bias
            weight, bias = idconv_weights(pointwise.run(self.proj, z), None, self.weight, self.bias, backend=self.backend)
        else:
            # training: proj runs twice, as officially (KxK map, then global mean): the BatchNorm's batch
            # statistics and its two running-statistic updates follow that order
            logits = pointwise.run(self.proj, z[..., :K, :K])
            bias_logits = None if self.bias is None else pointwise.run(self.proj, z[..., K:, K:]).reshape(B, G * C)
            weight, bias = idconv_weights(logits, bias_logits, self.weight, self.bias, backend=self.backend)
        return weight, (bias if self.bias is not None else None)

    def forward(self, x):
        weight, bias = self.dynamic_weight_and_bias(x)
        return ops.idconv(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), backend=self.backend)


class OSRA(nn.Module):
    """Overlapping spatial reduction attention (official name Attention).

    Queries at full resolution; keys/values from an overlapping strided depthwise reduction of x; an
    additive relative-position bias; the attention core is the fused `transxnet_ops.osra_attention`.

    `relative_pos_enc` (1, heads, N0, M0) is bicubic-resized (align_corners=False) to (N, M) when the input
    size differs from the one it was made for, like the official code.
    Dropout: the fused op never forms the attention matrix, so it cannot drop attention probabilities. With
    attn_drop > 0 in training mode, forward falls back to the explicit (reference) math with dropout; in eval
    mode, or with attn_drop == 0, the fused op runs.
    """

    def __init__(self, dim, num_heads=1, qk_scale=None, attn_drop=0.0, sr_ratio=1, backend=None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.backend = backend
        self.q = nn.Conv2d(dim, dim, kernel_size=1)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1)
        self.attn_drop = nn.Dropout(attn_drop)
        if sr_ratio > 1:
            self.sr = nn.Sequential(
                ConvBN(dim, dim, sr_ratio + 3, sr_ratio, (sr_ratio + 3) // 2, groups=dim, act=True),
                ConvBN(dim, dim, 1, groups=dim))
        else:
            self.sr = nn.Identity()
        self.local_conv = DWConv2d(dim, 3, backend=backend)
        if sr_ratio == 1:  # local_conv(x) + x as one conv: this 1 at the centre tap adds to local_conv's weight
            self.register_buffer("residual_tap", reduce.residual_tap(self.local_conv), persistent=False)

    def forward(self, x, relative_pos_enc=None):
        B, C, H, W = x.shape
        return self.attend(x, relative_pos_enc).transpose(-1, -2).reshape(B, C, H, W)

    def attend(self, x, relative_pos_enc=None):
        """The attention output before the heads are merged back into channels: (B, heads, H*W, C // heads)."""
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        # token-major projections (B, N, C): (B, heads, N, d) as the attention kernel reads it, with no copy
        # when heads == 1
        q = pointwise.conv1x1_tokens(x, self.q.weight, self.q.bias).reshape(B, -1, heads, d).transpose(1, 2)
        kv = reduce.reduce_keys(x, self.sr, self.local_conv, self.sr_ratio, backend=self.backend,
                                centre_tap=getattr(self, "residual_tap", None))
        # k and v as two products (weight rows [:C] and [C:]): each comes out contiguous
        wk, wv = self.kv.weight.chunk(2, dim=0)
        bk, bv = (None, None) if self.kv.bias is None else self.kv.bias.chunk(2)
        k = pointwise.conv1x1_tokens(kv, wk, bk).reshape(B, -1, heads, d).transpose(1, 2)
        v = pointwise.conv1x1_tokens(kv, wv, bv).reshape(B, -1, heads, d).transpose(1, 2)
        N, M = q.shape[2], k.shape[2]
        if relative_pos_enc is not None and relative_pos_enc.shape[2:] != (N, M):
            relative_pos_enc = F.interpolate(relative_pos_enc, size=(N, M), mode="bicubic", align_corners=False)
        if self.training and self.attn_drop.p > 0:
            # dropout on the probabilities needs the full N x M matrix: the official math, unfused
            attn = (q @ k.transpose(-1, -2)) * self.scale
            if relative_pos_enc is not None:
                attn = attn + relative_pos_enc
            out = self.attn_drop(torch.softmax(attn, dim=-1)) @ v
        else:
            bias = None if relative_pos_enc is None else relative_pos_enc.to(q.dtype)
            out = ops.osra_attention(q, k, v, bias, scale=self.scale, backend=self.backend)
        return out


class DMixer(nn.Module):
    """Dual dynamic token mixer (official HybridTokenMixer): IDConv on one half, OSRA on the other, then STE."""

    def __init__(self, dim, kernel_size=3, num_groups=2, num_heads=1, sr_ratio=1, reduction_ratio=8, backend=None):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"dim must be even, got {dim}")
        self.local_unit = IDConv2d(dim // 2, kernel_size=kernel_size, num_groups=num_groups, backend=backend)
        self.global_unit = OSRA(dim // 2, num_heads=num_heads, sr_ratio=sr_ratio, backend=backend)
        inner_dim = max(16, dim // reduction_ratio)
        self.proj = nn.Sequential(
            DWConv2d(dim, 3, backend=backend), nn.GELU(), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, inner_dim, kernel_size=1), nn.GELU(), nn.BatchNorm2d(inner_dim),
            nn.Conv2d(inner_dim, dim, kernel_size=1), nn.BatchNorm2d(dim))

    def forward(self, x, relative_pos_enc=None, residual=None, layer_scale=None):
        """proj(y) + y (STE) with y = cat(IDConv(x1), OSRA(x2)); with `residual` and `layer_scale` (a
        LayerScale): residual + layer_scale(proj(y) + y), one fused GEMM epilogue in eval mode."""
        B, _, H, W = x.shape
        x1, x2 = torch.chunk(x, chunks=2, dim=1)
        local = self.local_unit(x1)
        if isinstance(self.global_unit, OSRA):
            attn = self.global_unit.attend(x2, relative_pos_enc)  # (B, heads, N, d)
            heads, d = attn.shape[1], attn.shape[3]
            # one copy merges the heads and concatenates: the attention output goes transposed into its channels
            y = torch.cat([local.reshape(B, heads, d, H * W), attn.transpose(-1, -2)], dim=1).reshape(B, -1, H, W)
        else:  # a unit swapped in by the user (e.g. an official Attention before transxnet_ops.convert)
            y = torch.cat([local, self.global_unit(x2, relative_pos_enc)], dim=1)
        p = self.proj
        if all(pointwise.folds(p[i]) for i in (2, 5, 7)) and pointwise.is_conv1x1(p[3]) and pointwise.is_conv1x1(p[6]):
            # eval: the three BatchNorms are affine maps folded into the two 1x1 convs (and the layer scale)
            w1, b1 = pointwise.memo(self, "fc1", (p[2], p[3]), lambda: pointwise.fold_1x1(p[3], before=p[2]))
            if type(p[0]) is DWConv2d and pointwise.is_exact_gelu(p[1]) and _fused_cpu_inference(y, p[0], p[0].backend):
                t = ops.multiscale_dwconv2d_inference(  # CPU inference: the GELU inside the depthwise kernel
                    y, [p[0].weight], None if p[0].bias is None else [p[0].bias], gelu=True, backend=p[0].backend)
            else:
                t = p[1](p[0](y))
            u = p[4](pointwise.conv1x1(t, w1, b1))
            if layer_scale is None:
                w2, b2 = pointwise.memo(self, "fc2", (p[5], p[6], p[7]),
                                        lambda: pointwise.fold_1x1(p[6], before=p[5], after=p[7]))
                return pointwise.conv1x1(u, w2, b2, residual=y)
            gamma = layer_scale.weight.view(-1)
            w2, b2 = pointwise.memo(self, "fc2_scaled", (p[5], p[6], p[7], layer_scale), lambda: pointwise.fold_1x1(
                p[6], before=p[5], after=p[7], out_scale=gamma, out_shift=layer_scale.bias))
            return pointwise.conv1x1(u, w2, b2, residual=torch.addcmul(residual, y, gamma.view(1, -1, 1, 1)))
        out = pointwise.run(p, y) + y  # STE
        return out if layer_scale is None else residual + layer_scale(out)


HybridTokenMixer = DMixer  # the official name


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of sizes 1, 3, 5, 7 on four channel splits (the first split takes the remainder), run as
    one fused `multiscale_dwconv2d` (one launch, no split/cat copies); state_dict as officially (proj.{i})."""

    def __init__(self, dim, scale=(1, 3, 5, 7), backend=None):
        super().__init__()
        self.scale = scale
        self.backend = backend
        self.channels = [dim - dim // len(scale) * (len(scale) - 1)] + [dim // len(scale)] * (len(scale) - 1)
        self.proj = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.channels, scale))
        # dwconv(x) + x as one conv: these 1s at the centre taps add to the weights (forward(x, add_input=True))
        for i, conv in enumerate(self.proj):
            self.register_buffer(f"residual_tap_{i}", _centre_tap(conv.weight), persistent=False)

    def forward(self, x, add_input=False, in_affine=None, gelu=False):
        """The multi-scale depthwise conv of x; plus x itself with add_input=True (folded into the weights).
        Inference only: in_affine = (scale, shift) maps x per channel first (an eval BatchNorm; add_input then
        adds the mapped x), gelu applies the exact GELU to the output (multiscale_dwconv2d_inference)."""
        weights = [conv.weight for conv in self.proj]
        biases = [conv.bias for conv in self.proj]
        if add_input:
            weights = pointwise.memo(self, "weights_plus_taps", self.proj, lambda: [
                w + getattr(self, f"residual_tap_{i}").to(w.dtype) for i, w in enumerate(weights)])
        if in_affine is None and not gelu:
            return ops.multiscale_dwconv2d(x, weights, biases, backend=self.backend)
        scale, shift = (None, None) if in_affine is None else in_affine
        return ops.multiscale_dwconv2d_inference(x, weights, biases, scale, shift, gelu, backend=self.backend)


class MSFFN(nn.Module):
    """Multi-scale feed-forward network (official Mlp)."""

    def __init__(self, in_features, hidden_features=None, drop=0.0, backend=None):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Sequential(nn.Conv2d(in_features, hidden_features, 1, bias=False), nn.GELU(),
                                 nn.BatchNorm2d(hidden_features))
        self.dwconv = MultiScaleDWConv(hidden_features, backend=backend)
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(hidden_features)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden_features, in_features, 1, bias=False), nn.BatchNorm2d(in_features))
        self.drop = nn.Dropout(drop)

    def forward(self, x, residual=None, layer_scale=None):
        """fc2(norm(act(dwconv(h) + h))) with h = fc1(x); with `residual` and `layer_scale` (a LayerScale):
        residual + layer_scale(that), one fused GEMM epilogue in eval mode."""
        if (pointwise.folds(self.fc1[2]) and pointwise.is_exact_gelu(self.act)
                and _fused_cpu_inference(x, self, self.dwconv.backend)):
            # CPU inference: fc1's BatchNorm and the GELU run inside the depthwise kernels (one pass, not three)
            x = pointwise.run(list(self.fc1)[:2], x)
            affine = pointwise.memo(self, "fc1_bn", (self.fc1[2],), lambda: pointwise.bn_affine(self.fc1[2]))
            x = self.dwconv(x, add_input=True, in_affine=affine, gelu=True)  # gelu(dwconv(bn(x)) + bn(x))
        else:
            x = pointwise.run(self.fc1, x)
            x = self.act(self.dwconv(x, add_input=True))  # dwconv(x) + x
        no_dropout = self.drop.p == 0 or not self.drop.training
        if no_dropout and pointwise.folds(self.norm) and pointwise.folds(self.fc2[1]) and pointwise.is_conv1x1(self.fc2[0]):
            # eval: norm and fc2's BatchNorm folded into fc2 (and the layer scale into its output rows)
            sources = (self.norm, self.fc2[0], self.fc2[1], layer_scale)
            w, b = pointwise.memo(self, "fc2", sources, lambda: pointwise.fold_1x1(
                self.fc2[0], before=self.norm, after=self.fc2[1],
                out_scale=None if layer_scale is None else layer_scale.weight.view(-1),
                out_shift=None if layer_scale is None else layer_scale.bias))
            return pointwise.conv1x1(x, w, b, residual=residual)
        out = self.drop(pointwise.run(self.fc2, self.drop(self.norm(x))))
        return out if layer_scale is None else residual + layer_scale(out)


Mlp = MSFFN  # the official name


class LayerScale(nn.Module):
    """Per-channel scale and shift, stored as the official 1x1 depthwise conv parameters:
    weight (dim, 1, 1, 1) and bias (dim,); x * weight + bias equals that conv, without the conv launch."""

    def __init__(self, dim, init_value=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, 1, 1, 1) * init_value)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample, scaling kept samples by 1 / (1 - p)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class Block(nn.Module):
    """DPE (7x7 depthwise residual) -> GN -> D-Mixer (layer scale, drop path) -> GN -> MS-FFN (likewise)."""

    def __init__(self, dim=64, kernel_size=3, sr_ratio=1, num_groups=2, num_heads=1, mlp_ratio=4, drop=0.0,
                 drop_path=0.0, layer_scale_init_value=1e-5, grad_checkpoint=False, backend=None):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.pos_embed = DWConv2d(dim, 7, backend=backend)  # DPE
        # x + pos_embed(x) as one conv: this 1 at the centre tap adds to pos_embed's weight
        self.register_buffer("pos_embed_tap", _centre_tap(self.pos_embed.weight), persistent=False)
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = DMixer(dim, kernel_size=kernel_size, num_groups=num_groups, num_heads=num_heads,
                                  sr_ratio=sr_ratio, backend=backend)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = MSFFN(dim, int(dim * mlp_ratio), drop=drop, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale(dim, layer_scale_init_value)
            self.layer_scale_2 = LayerScale(dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = self.layer_scale_2 = nn.Identity()

    def _forward(self, x, relative_pos_enc=None):
        pe = self.pos_embed
        weight = pointwise.memo(self, "pos_embed", (pe,), lambda: pe.weight + self.pos_embed_tap.to(pe.weight.dtype))
        x = ops.dwconv2d(x, weight, pe.bias, backend=pe.backend)  # x + DPE(x)
        if isinstance(self.layer_scale_1, LayerScale) and (isinstance(self.drop_path, nn.Identity) or not self.training):
            # no stochastic depth: the token mixer and the MS-FFN add their scaled outputs to x themselves
            x = self.token_mixer(self.norm1(x), relative_pos_enc, residual=x, layer_scale=self.layer_scale_1)
            return self.mlp(self.norm2(x), residual=x, layer_scale=self.layer_scale_2)
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(self.norm1(x), relative_pos_enc)))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))

    def forward(self, x, relative_pos_enc=None):
        if self.grad_checkpoint and x.requires_grad:
            return torch.utils.checkpoint.checkpoint(self._forward, x, relative_pos_enc, use_reentrant=False)
        return self._forward(x, relative_pos_enc)


def _fused_cpu_inference(x, module, backend):
    """Whether `module`, run on x, may use an inference-only fused op (multiscale_dwconv2d_inference: input
    BatchNorm and output GELU inside the C++ depthwise kernels): eager CPU inference on the C++ backend.
    Autograd needs the differentiable ops; torch.compile fuses those maps by itself."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
    return (not needs_grad and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and backends.resolve(backend, "cpu") == "cpu")


def _centre_tap(weight):
    """A tensor like a depthwise weight (C, 1, k, k) that is 1 at the centre tap: w + it computes conv(x) + x."""
    tap = torch.zeros_like(weight, requires_grad=False)
    tap[:, :, weight.shape[2] // 2, weight.shape[3] // 2] = 1
    return tap


class PatchEmbed(nn.Module):
    """Strided conv + BN (stem and downsampling), keys proj.conv / proj.bn as in the official code."""

    def __init__(self, patch_size=16, stride=16, padding=0, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = ConvBN(in_chans, embed_dim, patch_size, stride, padding)

    def forward(self, x):
        return self.proj(x)
