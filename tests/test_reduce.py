"""The eval-mode folded OSRA reduce path equals the exact module path (conv -> BN -> GELU, 1x1 dw -> BN, local conv)."""
import pytest
import torch
from torch import nn

from transxnet_ops.reduce import reduce_keys
from utils import rel_err


class _ConvBN(nn.Sequential):
    """conv -> bn (-> GELU), named like mmcv's ConvModule."""

    def __init__(self, dim, k, stride, pad, act):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, k, stride, pad, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        if act:
            self.activate = nn.GELU()


def make_path(dim, sr_ratio):
    sr = nn.Identity() if sr_ratio == 1 else nn.Sequential(
        _ConvBN(dim, sr_ratio + 3, sr_ratio, (sr_ratio + 3) // 2, True), _ConvBN(dim, 1, 1, 0, False))
    local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
    for m in list(sr.modules()) + [local_conv]:  # non-trivial BN statistics and weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    return sr.double(), local_conv.double()


@pytest.mark.parametrize("sr_ratio", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [(56, 56), (15, 22)])
def test_folded_eval_path_matches_modules(sr_ratio, size):
    sr, local_conv = make_path(6, sr_ratio)
    sr.eval(), local_conv.eval()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    s = sr(x)
    assert rel_err(reduce_keys(x, sr, local_conv, sr_ratio), local_conv(s) + s) < 1e-12


def test_training_path_updates_running_stats():
    sr, local_conv = make_path(4, 4)
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    before = sr[0].bn.running_mean.clone()
    out = reduce_keys(x, sr, local_conv, 4)
    assert not torch.equal(before, sr[0].bn.running_mean)
    sr.eval()
    assert out.shape == (2, 4, 4, 4)
