"""IDConv's two reductions of x in one pass: the KxK adaptive average pool and the global mean.

Adaptive average pooling is linear and separable: pooled = A_h @ x @ A_w^T, where row i of A_h averages the
rows of bin i (bins [floor(i*H/K), ceil((i+1)*H/K)), overlapping when K does not divide H). Appending a row
of 1/H to A_h (and 1/W to A_w) makes entry [K, K] of the same product the global mean. So one small GEMM
chain reads x once and yields both, for any H, W, exactly matching F.adaptive_avg_pool2d and x.mean((2, 3)).
It is plain PyTorch: differentiable, traceable by torch.compile, and on GPU a memory-bound GEMM.
"""
import torch

_CACHE = {}  # (size, K, device, dtype) -> matrix, for eager mode: no rebuild (and on GPU no launches) per call


def _build_pool_matrix(size: int, K: int, device, dtype) -> torch.Tensor:
    """(K + 1, size) matrix on `device`: K adaptive-average rows, then a uniform-average row. Built from aranges
    (no Python loop over bins, no host-to-device copy) so that torch.compile traces it into the graph."""
    i = torch.arange(K + 1, device=device).unsqueeze(1)
    j = torch.arange(size, device=device)
    last = i == K
    start = torch.where(last, 0, (i * size) // K)              # floor(i * size / K), as adaptive_avg_pool2d
    end = torch.where(last, size, ((i + 1) * size + K - 1) // K)  # ceil((i + 1) * size / K)
    inside = (j >= start) & (j < end)
    return inside.to(torch.float64).div((end - start).to(torch.float64)).to(dtype)


def _pool_matrix(size, K, like):
    if torch.compiler.is_compiling() or type(like) is not torch.Tensor or like.device.type == "meta":
        # traced by torch.compile (a few constant ops); fake/meta tensors must not enter the cache
        return _build_pool_matrix(size, K, like.device, like.dtype)
    key = (size, K, like.device, like.dtype)
    A = _CACHE.get(key)
    if A is None:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, even if first built in inference mode
            A = _CACHE[key] = _build_pool_matrix(size, K, like.device, like.dtype)
    return A


def pool_and_mean(x: torch.Tensor, K: int):
    """x (B, C, H, W) -> (adaptive_avg_pool2d(x, K) as (B, C, K, K), x.mean((2, 3)) as (B, C))."""
    z = pool_with_mean(x, K)
    return z[..., :K, :K], z[..., K, K]


def pool_with_mean(x: torch.Tensor, K: int):
    """x (B, C, H, W) -> z (B, C, K + 1, K + 1): adaptive_avg_pool2d(x, K) in z[..., :K, :K], x.mean((2, 3)) in
    z[..., K, K] (the other entries of row/column K are mixed averages that callers ignore)."""
    H, W = x.shape[-2:]
    A_h, A_w = _pool_matrix(H, K, x), _pool_matrix(W, K, x)
    # Contract the longer axis first so the intermediate is the smaller one; x is read exactly once.
    if W >= H:
        z = A_h @ (x @ A_w.t())
    else:
        z = (A_h @ x) @ A_w.t()
    return z
