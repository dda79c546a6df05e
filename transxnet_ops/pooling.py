"""IDConv's two reductions of x in one pass: the KxK adaptive average pool and the global mean.

Adaptive average pooling is linear and separable: pooled = A_h @ x @ A_w^T, where row i of A_h averages the
rows of bin i (bins [floor(i*H/K), ceil((i+1)*H/K)), overlapping when K does not divide H). Appending a row
of 1/H to A_h (and 1/W to A_w) makes entry [K, K] of the same product the global mean. So one small GEMM
chain reads x once and yields both, for any H, W, exactly matching F.adaptive_avg_pool2d and x.mean((2, 3)).
It is plain PyTorch: differentiable, traceable by torch.compile, and on GPU a memory-bound GEMM.
"""
import functools

import torch


@functools.lru_cache(maxsize=64)
def _pool_matrix_cpu(size: int, K: int) -> torch.Tensor:
    """(K + 1, size) float64 matrix: K adaptive-average rows, then a uniform-average row."""
    A = torch.zeros(K + 1, size, dtype=torch.float64)
    for i in range(K):
        start, end = (i * size) // K, -((-(i + 1) * size) // K)  # floor, ceil as in adaptive_avg_pool2d
        A[i, start:end] = 1.0 / (end - start)
    A[K] = 1.0 / size
    return A


@functools.lru_cache(maxsize=64)
def _pool_matrix_on(size: int, K: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor even if first built in inference mode
        return _pool_matrix_cpu(size, K).to(device=device, dtype=dtype)


def _pool_matrix(size, K, like):
    if torch.compiler.is_compiling():  # built in the graph (a constant to the compiler; no cache to trace)
        return _pool_matrix_cpu.__wrapped__(size, K).to(device=like.device, dtype=like.dtype)
    # cached per device and dtype: converting per call costs two launches (on a GPU, host-to-device copies)
    return _pool_matrix_on(size, K, like.device, like.dtype)


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
