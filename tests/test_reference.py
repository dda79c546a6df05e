"""The reference math (the official code's formulation) against direct float64 loops written from the definitions."""
import math

import pytest
import torch

from transxnet_ops import reference


def idconv_loops(x, w, b):
    B, C, H, W = x.shape
    K = w.shape[-1]
    p = K // 2
    y = torch.zeros_like(x)
    for bi in range(B):
        for c in range(C):
            for h in range(H):
                for wi in range(W):
                    acc = 0.0 if b is None else b[bi, c].item()
                    for i in range(K):
                        for j in range(K):
                            hh, ww = h + i - p, wi + j - p
                            if 0 <= hh < H and 0 <= ww < W:
                                acc += w[bi, c, i, j].item() * x[bi, c, hh, ww].item()
                    y[bi, c, h, wi] = acc
    return y


def attention_loops(q, k, v, bias, scale):
    B, H, N, D = q.shape
    M = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for n in range(N):
                scores = [scale * sum(q[b, h, n, d].item() * k[b, h, m, d].item() for d in range(D))
                          + (0.0 if bias is None else bias[0, h, n, m].item()) for m in range(M)]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                for d in range(D):
                    out[b, h, n, d] = sum(wt * v[b, h, m, d].item() for m, wt in enumerate(weights)) / total
    return out


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 3), (1, 2, 3, 6, 5), (1, 1, 2, 2, 7)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_reference_idconv_matches_loops(shape, with_bias):
    B, C, H, W, K = shape
    x, w = torch.randn(B, C, H, W, dtype=torch.float64), torch.randn(B, C, K, K, dtype=torch.float64)
    b = torch.randn(B, C, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(reference.idconv(x, w, b), idconv_loops(x, w, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_reference_attention_matches_loops(with_bias, scale):
    B, H, N, M, D = 2, 2, 5, 3, 4
    q, k, v = (torch.randn(B, H, n, D, dtype=torch.float64) for n in (N, M, M))
    bias = torch.randn(1, H, N, M, dtype=torch.float64) if with_bias else None
    expected = attention_loops(q, k, v, bias, D ** -0.5 if scale is None else scale)
    torch.testing.assert_close(reference.osra_attention(q, k, v, bias, scale), expected, rtol=1e-12, atol=1e-12)
