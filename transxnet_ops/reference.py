"""Pure-PyTorch math of every op, written as the official TransXNet code computes it.

These are the ground truth of the tests and the "reference" backend.
"""
import torch
import torch.nn.functional as F


def idconv(x, weight, bias=None):
    """Per-sample depthwise conv as the official DynamicConv2d runs it: one grouped conv over B*C groups."""
    B, C, H, W = x.shape
    K = weight.shape[-1]
    y = F.conv2d(x.reshape(1, B * C, H, W), weight.reshape(B * C, 1, K, K),
                 None if bias is None else bias.reshape(B * C), padding=K // 2, groups=B * C)
    return y.reshape(B, C, H, W)


def dwconv2d(x, weight, bias, split_sizes, kernel_sizes):
    """Static depthwise conv with channel segments of their own kernel size, packed weights (see ops.dwconv2d):
    one nn.Conv2d(groups=c) per segment, as the official MultiScaleDWConv / DPE / local_conv run it."""
    weights = weight.split([c * k * k for c, k in zip(split_sizes, kernel_sizes)])
    biases = [None] * len(split_sizes) if bias is None else bias.split(list(split_sizes))
    outs = [F.conv2d(part, w.reshape(c, 1, k, k), b, padding=k // 2, groups=c)
            for part, w, b, c, k in zip(x.split(list(split_sizes), dim=1), weights, biases, split_sizes, kernel_sizes)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def osra_attention(q, k, v, bias=None, scale=None):
    """softmax(q k^T * scale + bias) v with the full N x M matrix, as the official Attention does."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        attn = attn + bias
    return torch.softmax(attn, dim=-1) @ v
