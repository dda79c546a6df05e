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


def osra_attention(q, k, v, bias=None, scale=None):
    """softmax(q k^T * scale + bias) v with the full N x M matrix, as the official Attention does."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        attn = attn + bias
    return torch.softmax(attn, dim=-1) @ v
