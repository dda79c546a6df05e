"""OSRA's key/value reduce path with the eval-mode BatchNorms folded away.

Official path (sr_ratio > 1):  s = GELU(BN1(dwconv_{sr+3, stride sr}(x)));  s = BN2(dw1x1(s));  kv_in = local_conv(s) + s
In eval mode BN is affine, so BN1 folds into the strided conv, dw1x1+BN2 is a per-channel affine, and the
"+ s" residual folds into the centre tap of local_conv: 2 convolutions and one fused GELU-affine instead of
7 kernels. In training the exact module path runs (batch statistics, running-stat updates).
"""
import torch
import torch.nn.functional as F


def _bn_scale_shift(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _local_conv_with_residual(local_conv):
    """local_conv(s) + s as one 3x3 depthwise conv: add 1 to the centre tap."""
    w = local_conv.weight.clone()
    c = w.shape[-1] // 2
    w[:, :, c, c] += 1
    return w, local_conv.bias


def _folded_params(sr, local_conv):
    conv1, bn1 = sr[0].conv, sr[0].bn
    s1, t1 = _bn_scale_shift(bn1)
    w1 = conv1.weight * s1.view(-1, 1, 1, 1)
    s2, t2 = _bn_scale_shift(sr[1].bn)
    a = sr[1].conv.weight.view(-1) * s2  # dw1x1 then BN2: s -> a * s + t2
    w3, b3 = _local_conv_with_residual(local_conv)
    return w1, t1, a, t2, w3, b3, conv1


def reduce_keys(x, sr, local_conv, sr_ratio):
    """The tensor that OSRA's kv projection reads, (B, C, ceil(H/sr), ceil(W/sr)) up to conv rounding."""
    if sr_ratio == 1:
        if not local_conv.training:
            w3, b3 = _local_conv_with_residual(local_conv)
            return F.conv2d(x, w3, b3, padding=local_conv.padding, groups=local_conv.groups)
        return local_conv(x) + x
    if sr.training or sr[0].bn.training or sr[1].bn.training:
        s = sr(x)
        return local_conv(s) + s
    w1, t1, a, t2, w3, b3, conv1 = _folded_params(sr, local_conv)
    s = F.conv2d(x, w1, t1, stride=conv1.stride, padding=conv1.padding, groups=conv1.groups)
    s = torch.addcmul(t2.view(1, -1, 1, 1), F.gelu(s), a.view(1, -1, 1, 1))
    return F.conv2d(s, w3, b3, padding=local_conv.padding, groups=local_conv.groups)
