"""Bad input raises a clear Python error naming the argument, on every backend, before any kernel runs."""
import pytest
import torch

import transxnet_ops
from utils import backend_device_pairs

BACKENDS = [b for b, _ in backend_device_pairs()] + ["reference"]


def x_w_b(B=2, C=3, H=6, W=6, K=3, dtype=torch.float32):
    return torch.randn(B, C, H, W, dtype=dtype), torch.randn(B, C, K, K, dtype=dtype), torch.randn(B, C, dtype=dtype)


IDCONV_CASES = {
    "x rank 3": (lambda x, w, b: (x[0], w, b), ValueError, "x must be 4-D"),
    "even K": (lambda x, w, b: (x, torch.randn(2, 3, 4, 4), b), ValueError, "must be odd"),
    "non-square K": (lambda x, w, b: (x, torch.randn(2, 3, 3, 5), b), ValueError, "weight must be (B, C, K, K)"),
    "weight batch": (lambda x, w, b: (x, w[:1], b), ValueError, "weight must be (B, C, K, K) = (2, 3, K, K)"),
    "bias shape": (lambda x, w, b: (x, w, b[:, :2]), ValueError, "bias must be (B, C) = (2, 3)"),
    "weight dtype": (lambda x, w, b: (x, w.double(), b), TypeError, "weight must have x's dtype"),
    "bias device": (lambda x, w, b: (x, w, b.to("meta")), TypeError, "bias must be on x's device"),
    "integer x": (lambda x, w, b: (x.long(), w.long(), b.long()), TypeError, "floating-point"),
    "not a tensor": (lambda x, w, b: (x, w.tolist(), b), TypeError, "weight must be a torch.Tensor"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(IDCONV_CASES))
def test_idconv_bad_input(backend, case):
    make, exc, message = IDCONV_CASES[case]
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        transxnet_ops.idconv(*make(*x_w_b()), backend=backend)


def test_idconv_reports_every_problem_at_once():
    x, _, _ = x_w_b()
    with pytest.raises(ValueError) as info:
        transxnet_ops.idconv(x, torch.randn(1, 3, 4, 4), torch.randn(5))
    assert "weight" in str(info.value) and "bias" in str(info.value)


def q_k_v_bias(B=2, H=2, N=6, M=4, D=8):
    return (torch.randn(B, H, N, D), torch.randn(B, H, M, D), torch.randn(B, H, M, D), torch.randn(1, H, N, M))


ATTN_CASES = {
    "q rank 3": (lambda q, k, v, b: (q[0], k, v, b), ValueError, "q must be 4-D"),
    "k head dim": (lambda q, k, v, b: (q, k[..., :4], v, b), ValueError, "k must be (B, heads, M, head_dim)"),
    "k heads": (lambda q, k, v, b: (q, k[:, :1], v, b), ValueError, "k must be (B, heads, M, head_dim)"),
    "v shape": (lambda q, k, v, b: (q, k, v[:, :, :3], b), ValueError, "v must have k's shape"),
    "bias not broadcastable": (lambda q, k, v, b: (q, k, v, torch.randn(1, 2, 6, 5)), ValueError, "bias must be broadcastable"),
    "bias rank 5": (lambda q, k, v, b: (q, k, v, b[None]), ValueError, "bias must be broadcastable"),
    "dtype mismatch": (lambda q, k, v, b: (q, k.double(), v, b), TypeError, "k must have q's dtype"),
    "device mismatch": (lambda q, k, v, b: (q, k, v.to("meta"), b), TypeError, "v must be on q's device"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_osra_attention_bad_input(backend, case):
    make, exc, message = ATTN_CASES[case]
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        transxnet_ops.osra_attention(*make(*q_k_v_bias()), backend=backend)


def test_native_op_checks_shapes_itself():
    """A direct torch.ops call skips the Python checks: the C++ side must still refuse, not read out of bounds."""
    if "cpu" not in transxnet_ops.available_backends("cpu"):
        pytest.skip("extension not built")
    x, w, b = x_w_b()
    with pytest.raises(RuntimeError, match="weight must be"):
        torch.ops.transxnet_ops.idconv(x, w[:1], b)
    q, k, v, bias = q_k_v_bias()
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.transxnet_ops.osra_attention(q, k, v, bias[..., :2], 0.5)
