"""pool_and_mean equals adaptive_avg_pool2d + mean for any size, including bins that overlap."""
import pytest
import torch
import torch.nn.functional as F

from transxnet_ops.pooling import pool_and_mean
from utils import rel_err


@pytest.mark.parametrize("H,W,K", [(56, 56, 7), (14, 14, 7), (7, 7, 7), (9, 13, 7), (5, 3, 7), (1, 1, 3), (30, 17, 5)])
def test_matches_adaptive_pool_and_mean(H, W, K):
    x = torch.randn(2, 3, H, W, dtype=torch.float64)
    pooled, mean = pool_and_mean(x, K)
    assert rel_err(pooled, F.adaptive_avg_pool2d(x, K)) < 1e-12
    assert rel_err(mean, x.mean((2, 3))) < 1e-12


def test_channels_last_float32_and_gradient():
    x = torch.randn(2, 4, 11, 9).to(memory_format=torch.channels_last).requires_grad_()
    pooled, mean = pool_and_mean(x, 7)
    assert rel_err(pooled, F.adaptive_avg_pool2d(x, 7)) < 1e-6
    assert torch.autograd.gradcheck(lambda t: pool_and_mean(t, 3), (torch.randn(1, 2, 5, 4, dtype=torch.float64,
                                                                               requires_grad=True),))


def test_matrix_cached_in_inference_mode_serves_autograd_later():
    """The eager cache must hold normal tensors: built first under inference_mode, then used with autograd."""
    with torch.inference_mode():
        pool_and_mean(torch.randn(1, 2, 23, 19), 5)
    x = torch.randn(1, 2, 23, 19, requires_grad=True)
    pooled, mean = pool_and_mean(x, 5)
    (pooled.sum() + mean.sum()).backward()
    assert rel_err(x.grad, torch.autograd.grad(F.adaptive_avg_pool2d(x, 5).sum() + x.mean((2, 3)).sum(), x)[0]) < 1e-6
