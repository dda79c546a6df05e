"""Test-only ground truth: the official TransXNet DynamicConv2d (IDConv) and Attention (OSRA), restated in
plain PyTorch step by step as models/transxnet.py of LMMMEng/TransXNet (commit ce2c73d) computes them,
with the same attribute names, so their state_dicts are the official ones.

Deliberately unoptimised: KxK pool and global mean as two separate reductions, the (B, G, C, K, K) product
materialised, the N x M attention matrix formed, BatchNorms never folded.
"""
import torch
import torch.nn.functional as F
from torch import nn

from transxnet_ops.nn import IDConv2d, OSRA


class ConvModule(nn.Sequential):
    """What mmcv's ConvModule builds here: conv (no bias, since BN follows), bn, optional GELU `activate`."""

    def __init__(self, in_dim, out_dim, kernel_size, stride=1, padding=0, groups=1, act=False):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_dim)
        if act:
            self.activate = nn.GELU()


class DynamicConv2d(nn.Module):
    """Official IDConv."""

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
        nn.init.trunc_normal_(self.weight, std=0.02)
        if self.bias is not None:
            nn.init.trunc_normal_(self.bias, std=0.02)

    def forward(self, x):
        B, C, H, W = x.shape
        G, K = self.num_groups, self.K
        # kernel: softmax over groups of proj(KxK pool), times the G learnable kernels, summed over groups
        scale = torch.softmax(self.proj(self.pool(x)).reshape(B, G, C, K, K), dim=1)
        weight = (scale * self.weight.unsqueeze(0)).sum(dim=1).reshape(B * C, 1, K, K)
        bias = None
        if self.bias is not None:
            # proj runs a second time, on the global mean: its BatchNorm sees (and in training counts) both calls
            scale = torch.softmax(self.proj(x.mean(dim=(2, 3), keepdim=True)).reshape(B, G, C), dim=1)
            bias = (scale * self.bias.unsqueeze(0)).sum(dim=1).flatten()
        y = F.conv2d(x.reshape(1, B * C, H, W), weight, bias, padding=K // 2, groups=B * C)
        return y.reshape(B, C, H, W)


class Attention(nn.Module):
    """Official OSRA."""

    def __init__(self, dim, num_heads=1, qk_scale=None, attn_drop=0.0, sr_ratio=1):
        super().__init__()
        assert dim % num_heads == 0
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Conv2d(dim, dim, kernel_size=1)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1)
        self.attn_drop = nn.Dropout(attn_drop)
        if sr_ratio > 1:
            self.sr = nn.Sequential(
                ConvModule(dim, dim, sr_ratio + 3, stride=sr_ratio, padding=(sr_ratio + 3) // 2, groups=dim, act=True),
                ConvModule(dim, dim, 1, groups=dim))
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x, relative_pos_enc=None):
        B, C, H, W = x.shape
        h = self.num_heads
        q = self.q(x).reshape(B, h, C // h, -1).transpose(-1, -2)       # (B, h, N, d)
        kv = self.sr(x)
        kv = self.local_conv(kv) + kv
        k, v = torch.chunk(self.kv(kv), chunks=2, dim=1)
        k = k.reshape(B, h, C // h, -1)                                   # (B, h, d, M)
        v = v.reshape(B, h, C // h, -1).transpose(-1, -2)                 # (B, h, M, d)
        attn = (q @ k) * self.scale
        if relative_pos_enc is not None:
            if attn.shape[2:] != relative_pos_enc.shape[2:]:
                relative_pos_enc = F.interpolate(relative_pos_enc, size=attn.shape[2:], mode="bicubic",
                                                 align_corners=False)
            attn = attn + relative_pos_enc
        attn = self.attn_drop(torch.softmax(attn, dim=-1))
        return (attn @ v).transpose(-1, -2).reshape(B, C, H, W)


def official_like(fused):
    """The official-style module with the same hyper-parameters and state as an IDConv2d / OSRA."""
    if isinstance(fused, IDConv2d):
        C = fused.weight.shape[1]
        ref = DynamicConv2d(C, fused.K, fused.reduction_ratio, fused.num_groups, fused.bias is not None)
    elif isinstance(fused, OSRA):
        ref = Attention(fused.dim, fused.num_heads, attn_drop=fused.attn_drop.p, sr_ratio=fused.sr_ratio)
        ref.scale = fused.scale
    else:
        raise TypeError(type(fused))
    p = next(fused.parameters())
    ref.to(device=p.device, dtype=p.dtype).load_state_dict(fused.state_dict(), strict=True)
    return ref.train(fused.training)


def to_official(model):
    """Swap every IDConv2d / OSRA in `model` for its official-style twin, in place (the inverse of convert)."""
    for name, child in list(model.named_children()):
        if isinstance(child, (IDConv2d, OSRA)):
            setattr(model, name, official_like(child))
        else:
            to_official(child)
    return model
