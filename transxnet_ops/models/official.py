"""The official TransXNet (models/transxnet.py of LMMMEng/TransXNet, commit ce2c73d) restated in plain PyTorch,
without mmcv or timm: **a baseline for benchmarks and tests, not the fast model** (use transxnet_t/s/b for that).

It computes what the official code computes, the slow way the official code computes it:
- IDConv (DynamicConv2d): adaptive KxK pool and global mean as two reductions, `proj` run twice (its BatchNorm
  sees both calls), the (B, G, C, K, K) product materialised, then one F.conv2d with groups=B*C;
- OSRA (Attention): the strided reduction as ConvModules with their BatchNorms (never folded), the N x M
  attention matrix formed by matmul + softmax, the relative-position encoding bicubic-resized when the input
  size differs from the one it was made for;
- MS-FFN: split -> four depthwise convs (1, 3, 5, 7) -> cat; LayerScale as a 1x1 depthwise F.conv2d;
  timm-style DropPath; GroupNorm(1) block norms; PatchEmbed conv (no bias) + BN;
- gradient checkpointing per stage (`grad_checkpoint` and `checkpoint_stage`, as officially: with
  grad_checkpoint=True and the default checkpoint_stage [0, 0, 0, 0] no stage is checkpointed);
- the official initialisation (mmcv ConvModule's kaiming init, then `_init_model_weights`), in the same order.

Module and attribute names are the official ones, so `state_dict()` has exactly the official keys, order and
shapes, and official checkpoints load with strict=True (into this model and into transxnet_t/s/b alike).
Not restated: checkpoint downloading and mmdet/mmseg registration (`init_weights` / `init_cfg` / `pretrained`).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint

from .transxnet import _arch

__all__ = ["OfficialTransXNet", "official_transxnet_t", "official_transxnet_s", "official_transxnet_b",
           "ConvModule", "PatchEmbed", "Attention", "DynamicConv2d", "HybridTokenMixer", "MultiScaleDWConv", "Mlp",
           "LayerScale", "DropPath", "Block"]


class ConvModule(nn.Module):
    """mmcv's ConvModule as TransXNet uses it: conv (no bias: a BatchNorm follows) -> `bn` -> optional GELU
    `activate`. mmcv initialises it at construction: kaiming-normal (fan_out, relu) conv, unit/zero BN."""

    def __init__(self, in_dim, out_dim, kernel_size, stride=1, padding=0, groups=1, act=False):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)
        self.activate = nn.GELU() if act else None
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.activate is None else self.activate(x)


class PatchEmbed(nn.Module):
    """Stem (7x7, stride 4) and downsampling (3x3, stride 2): a strided ConvModule with BN, no activation."""

    def __init__(self, patch_size=16, stride=16, padding=0, in_chans=3, embed_dim=768):
        super().__init__()
        self.proj = ConvModule(in_chans, embed_dim, patch_size, stride=stride, padding=padding)

    def forward(self, x):
        return self.proj(x)


class Attention(nn.Module):
    """OSRA: full-resolution queries; keys/values from an overlapping strided depthwise reduction
    (sr_ratio > 1) plus a 3x3 depthwise residual; softmax(q k^T * scale + bias) v with the matrix formed."""

    def __init__(self, dim, num_heads=1, qk_scale=None, attn_drop=0.0, sr_ratio=1):
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} should be divided by num_heads {num_heads}."
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Conv2d(dim, dim, kernel_size=1)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1)
        self.attn_drop = nn.Dropout(attn_drop)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = nn.Sequential(ConvModule(dim, dim, k, stride=sr_ratio, padding=k // 2, groups=dim, act=True),
                                    ConvModule(dim, dim, 1, groups=dim))
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x, relative_pos_enc=None):
        B, C, H, W = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(B, heads, C // heads, -1).transpose(-1, -2)   # (B, h, N, d)
        kv = self.sr(x)
        kv = self.local_conv(kv) + kv
        k, v = torch.chunk(self.kv(kv), chunks=2, dim=1)
        k = k.reshape(B, heads, C // heads, -1)                               # (B, h, d, M)
        v = v.reshape(B, heads, C // heads, -1).transpose(-1, -2)             # (B, h, M, d)
        attn = (q @ k) * self.scale
        if relative_pos_enc is not None:
            if attn.shape[2:] != relative_pos_enc.shape[2:]:
                relative_pos_enc = F.interpolate(relative_pos_enc, size=attn.shape[2:], mode="bicubic",
                                                 align_corners=False)
            attn = attn + relative_pos_enc
        attn = self.attn_drop(torch.softmax(attn, dim=-1))
        return (attn @ v).transpose(-1, -2).reshape(B, C, H, W)


class DynamicConv2d(nn.Module):
    """IDConv: per-sample depthwise kernels (and bias) from attention over G learnable kernels, applied as one
    grouped F.conv2d over the B*C planes of the batch."""

    def __init__(self, dim, kernel_size=3, reduction_ratio=4, num_groups=1, bias=True):
        super().__init__()
        assert num_groups > 1, f"num_groups {num_groups} should > 1."
        self.num_groups = num_groups
        self.K = kernel_size
        self.bias_type = bias
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.pool = nn.AdaptiveAvgPool2d(output_size=(kernel_size, kernel_size))
        self.proj = nn.Sequential(ConvModule(dim, dim // reduction_ratio, 1, act=True),
                                  nn.Conv2d(dim // reduction_ratio, dim * num_groups, kernel_size=1))
        self.bias = nn.Parameter(torch.empty(num_groups, dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.trunc_normal_(self.bias, std=0.02)

    def forward(self, x):
        B, C, H, W = x.shape
        G, K = self.num_groups, self.K
        scale = torch.softmax(self.proj(self.pool(x)).reshape(B, G, C, K, K), dim=1)
        weight = (scale * self.weight.unsqueeze(0)).sum(dim=1).reshape(B * C, 1, K, K)  # (B, G, C, K, K) formed
        bias = None
        if self.bias is not None:
            # proj runs again, on the global mean: in training its BatchNorm counts this call too
            scale = torch.softmax(self.proj(x.mean(dim=(2, 3), keepdim=True)).reshape(B, G, C), dim=1)
            bias = (scale * self.bias.unsqueeze(0)).sum(dim=1).flatten(0)
        y = F.conv2d(x.reshape(1, B * C, H, W), weight, bias, padding=K // 2, groups=B * C)
        return y.reshape(B, C, H, W)


class HybridTokenMixer(nn.Module):
    """D-Mixer: IDConv on the first half of the channels, OSRA on the second, concatenated, then the STE
    (3x3 depthwise, GELU, BN, 1x1, GELU, BN, 1x1, BN) with a residual."""

    def __init__(self, dim, kernel_size=3, num_groups=2, num_heads=1, sr_ratio=1, reduction_ratio=8):
        super().__init__()
        assert dim % 2 == 0, f"dim {dim} should be divided by 2."
        self.local_unit = DynamicConv2d(dim // 2, kernel_size=kernel_size, num_groups=num_groups)
        self.global_unit = Attention(dim // 2, num_heads=num_heads, sr_ratio=sr_ratio)
        inner_dim = max(16, dim // reduction_ratio)
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim), nn.GELU(), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, inner_dim, kernel_size=1), nn.GELU(), nn.BatchNorm2d(inner_dim),
            nn.Conv2d(inner_dim, dim, kernel_size=1), nn.BatchNorm2d(dim))

    def forward(self, x, relative_pos_enc=None):
        x1, x2 = torch.chunk(x, chunks=2, dim=1)
        x = torch.cat([self.local_unit(x1), self.global_unit(x2, relative_pos_enc)], dim=1)
        return self.proj(x) + x


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of sizes `scale` on consecutive channel splits (the first split takes the remainder):
    split, one nn.Conv2d per split, cat."""

    def __init__(self, dim, scale=(1, 3, 5, 7)):
        super().__init__()
        self.scale = scale
        n = len(scale)
        self.channels = [dim - dim // n * (n - 1)] + [dim // n] * (n - 1)
        self.proj = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(self.channels, scale))

    def forward(self, x):
        parts = torch.split(x, self.channels, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.proj, parts)], dim=1)


class Mlp(nn.Module):
    """MS-FFN: 1x1 conv (no bias), GELU, BN; multi-scale depthwise conv with a residual, GELU, BN; 1x1 conv
    (no bias), BN."""

    def __init__(self, in_features, hidden_features=None, out_features=None, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Sequential(nn.Conv2d(in_features, hidden_features, 1, bias=False), nn.GELU(),
                                 nn.BatchNorm2d(hidden_features))
        self.dwconv = MultiScaleDWConv(hidden_features)
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(hidden_features)
        # officially the output conv maps back to in_features (out_features is accepted and unused)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden_features, in_features, 1, bias=False), nn.BatchNorm2d(in_features))
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.fc1(x)
        x = self.norm(self.act(self.dwconv(x) + x))
        return self.drop(self.fc2(self.drop(x)))


class LayerScale(nn.Module):
    """Per-channel scale and shift run as a 1x1 depthwise convolution (weight (dim, 1, 1, 1), bias (dim,))."""

    def __init__(self, dim, init_value=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, 1, 1, 1) * init_value)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])


class DropPath(nn.Module):
    """timm's DropPath (stochastic depth, scale_by_keep=True): a per-sample Bernoulli(1 - p) mask divided by
    1 - p, multiplied into x; the identity when p == 0 or in eval mode."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self):
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class Block(nn.Module):
    """x + DPE(x); x + DropPath(LayerScale(D-Mixer(GN(x)))); x + DropPath(LayerScale(MS-FFN(GN(x))))."""

    def __init__(self, dim=64, kernel_size=3, sr_ratio=1, num_groups=2, num_heads=1, mlp_ratio=4, drop=0.0,
                 drop_path=0.0, layer_scale_init_value=1e-5, grad_checkpoint=False):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = HybridTokenMixer(dim, kernel_size=kernel_size, num_groups=num_groups,
                                            num_heads=num_heads, sr_ratio=sr_ratio)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if layer_scale_init_value is not None:
            self.layer_scale_1 = LayerScale(dim, layer_scale_init_value)
            self.layer_scale_2 = LayerScale(dim, layer_scale_init_value)
        else:
            self.layer_scale_1 = nn.Identity()
            self.layer_scale_2 = nn.Identity()

    def _forward_impl(self, x, relative_pos_enc=None):
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.layer_scale_1(self.token_mixer(self.norm1(x), relative_pos_enc)))
        return x + self.drop_path(self.layer_scale_2(self.mlp(self.norm2(x))))

    def forward(self, x, relative_pos_enc=None):
        if self.grad_checkpoint and x.requires_grad:
            # officially the (then default) reentrant variant; the non-reentrant one computes the same gradients
            # and also works under torch.compile
            return checkpoint.checkpoint(self._forward_impl, x, relative_pos_enc, use_reentrant=False)
        return self._forward_impl(x, relative_pos_enc)


def basic_blocks(dim, index, layers, kernel_size=3, num_groups=2, num_heads=1, sr_ratio=1, mlp_ratio=4, drop_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init_value=1e-5, grad_checkpoint=False):
    """The blocks of stage `index`; the drop-path rate grows linearly over all blocks of the network."""
    blocks = nn.ModuleList()
    for block_idx in range(layers[index]):
        block_dpr = drop_path_rate * (block_idx + sum(layers[:index])) / (sum(layers) - 1)
        blocks.append(Block(dim, kernel_size=kernel_size, num_groups=num_groups, num_heads=num_heads,
                            sr_ratio=sr_ratio, mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=block_dpr,
                            layer_scale_init_value=layer_scale_init_value, grad_checkpoint=grad_checkpoint))
    return blocks


_DEFAULT_CFGS = {"norm_cfg": dict(type="GN", num_groups=1), "act_cfg": dict(type="GELU"), "init_cfg": None,
                 "pretrained": None}


def _check_unsupported(kwargs):
    """The official constructor takes mmcv configs and checkpoint options; only their defaults are restated
    (other unknown keywords are ignored, as officially)."""
    for key, default in _DEFAULT_CFGS.items():
        if key in kwargs and kwargs[key] != default:
            raise ValueError(f"{key}={kwargs[key]!r} is not restated (only {default!r}): load weights with "
                             "load_state_dict instead of init_cfg/pretrained")


class OfficialTransXNet(nn.Module):
    """The official TransXNet network (arch "t"/"s"/"b", their long names, or a dict like the official
    arch_settings): stem, four stages with downsampling in between, a GroupNorm -> average pool -> 1x1 conv
    classifier, or (fork_feat=True) the four stage outputs through norm0/norm2/norm4/norm6.

    `image_size` only sizes the (1, heads, N, M) relative-position encodings, one per stage, shared by its
    blocks; other input sizes get them bicubic-resized.
    """

    def __init__(self, image_size=224, arch="tiny", in_chans=3, in_patch_size=7, in_stride=4, in_pad=3,
                 down_patch_size=3, down_stride=2, down_pad=1, drop_rate=0.0, drop_path_rate=0.0,
                 grad_checkpoint=False, checkpoint_stage=(0, 0, 0, 0), num_classes=1000, fork_feat=False,
                 start_level=0, **kwargs):
        super().__init__()
        _check_unsupported(kwargs)
        if not fork_feat:
            self.num_classes = num_classes
        self.fork_feat = fork_feat
        self.grad_checkpoint = grad_checkpoint
        cfg = _arch(arch)
        layers, embed_dims = cfg["layers"], cfg["embed_dims"]
        if not grad_checkpoint:
            checkpoint_stage = [0] * 4

        self.patch_embed = PatchEmbed(in_patch_size, in_stride, in_pad, in_chans, embed_dims[0])

        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        h, w = math.ceil(h / in_stride), math.ceil(w / in_stride)
        encodings, self.pos_enc_record = [], []
        for i in range(4):
            sr = cfg["sr_ratio"][i]
            encodings.append(nn.Parameter(torch.zeros(1, cfg["num_heads"][i], h * w,
                                                      math.ceil(h / sr) * math.ceil(w / sr))))
            self.pos_enc_record.append([h, w, math.ceil(h / sr), math.ceil(w / sr)])
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.relative_pos_enc = nn.ParameterList(encodings)

        network = []
        for i in range(len(layers)):
            network.append(basic_blocks(
                embed_dims[i], i, layers, kernel_size=cfg["kernel_size"][i], num_groups=cfg["num_groups"][i],
                num_heads=cfg["num_heads"][i], sr_ratio=cfg["sr_ratio"][i], mlp_ratio=cfg["mlp_ratios"][i],
                drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                layer_scale_init_value=cfg["layer_scale_init_value"], grad_checkpoint=checkpoint_stage[i]))
            if i >= len(layers) - 1:
                break
            if embed_dims[i] != embed_dims[i + 1]:
                network.append(PatchEmbed(down_patch_size, down_stride, down_pad, embed_dims[i], embed_dims[i + 1]))
        self.network = nn.ModuleList(network)

        if fork_feat:
            self.out_indices = [0, 2, 4, 6]
            for level, idx in enumerate(self.out_indices):
                norm = nn.Identity() if level < start_level else nn.GroupNorm(1, embed_dims[(idx + 1) // 2])
                self.add_module(f"norm{idx}", norm)
        else:
            self.classifier = nn.Sequential(
                nn.GroupNorm(1, embed_dims[-1]), nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(embed_dims[-1], num_classes, kernel_size=1),
            ) if num_classes > 0 else nn.Identity()
        self.apply(self._init_model_weights)

    @staticmethod
    def _init_model_weights(m):
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_classifier(self):
        return self.classifier

    def reset_classifier(self, num_classes):
        # as officially: only the recorded out_channels changes (the conv keeps its weights)
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier[-1].out_channels = num_classes
        else:
            self.classifier = nn.Identity()

    def forward_embeddings(self, x):
        return self.patch_embed(x)

    def forward_tokens(self, x):
        outs, stage = [], 0
        for idx, layer in enumerate(self.network):
            if idx in (0, 2, 4, 6):
                for block in layer:
                    x = block(x, self.relative_pos_enc[stage])
                stage += 1
            else:
                x = layer(x)
            if self.fork_feat and idx in self.out_indices:
                outs.append(getattr(self, f"norm{idx}")(x))
        return outs if self.fork_feat else x

    def forward(self, x):
        x = self.forward_tokens(self.forward_embeddings(x))
        return x if self.fork_feat else self.classifier(x).flatten(1)


def official_transxnet_t(**kwargs):
    """Official TransXNet-T (12.8M parameters), restated: a baseline, not the fast model."""
    return OfficialTransXNet(arch="t", **kwargs)


def official_transxnet_s(**kwargs):
    """Official TransXNet-S (26.9M parameters), restated: a baseline, not the fast model."""
    return OfficialTransXNet(arch="s", **kwargs)


def official_transxnet_b(**kwargs):
    """Official TransXNet-B (48.0M parameters), restated: a baseline, not the fast model."""
    return OfficialTransXNet(arch="b", **kwargs)
