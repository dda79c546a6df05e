"""IDConv's dynamic kernels and bias from proj's output, as one op (official DynamicConv2d):

    weight_out[b, c] = sum_g softmax_g(logits.reshape(B, G, C, K, K))[b, g, c] * weight[g, c]
    bias_out[b, c]   = sum_g softmax_g(bias_logits.reshape(B, G, C))[b, g, c] * bias[g, c]

one kernel forward and one backward (the parameter gradients summed over the batch in a fixed order), reading
the logits once, never materialising the (B, G, C, K, K) product. In eval, where proj is the same affine map at
every position, IDConv2d runs proj once on the KxK pool with the global mean appended at [K, K] (the "packed"
(B, G*C, K+1, K+1) logits); in training proj runs twice as officially and the bias logits come separately.
"""
import torch

from . import reduce

_NS = "transxnet_ops"


def idconv_weights(logits, bias_logits, weight, bias=None, backend=None):
    """-> (weight_out (B, C, K, K), bias_out (B, C) or an empty tensor when bias is None), in logits' dtype.

    logits (B, G*C, K, K), or packed (B, G*C, K+1, K+1) whose [..., K, K] entries are the bias logits when
    bias_logits is None; bias_logits (B, G*C) or None; weight (G, C, K, K); bias (G, C) or None.
    Differentiable in logits, bias_logits, weight and bias.
    """
    _check(logits, bias_logits, weight, bias)
    name = reduce.resolve_backend(backend, logits.device.type, "idconv_weights")
    if name == "reference":
        return reference_idconv_weights(logits, bias_logits, weight, bias)
    op = getattr(torch.ops, _NS).idconv_weights_triton if name == "triton" else getattr(torch.ops, _NS).idconv_weights
    return op(logits, bias_logits, weight, bias)


def reference_idconv_weights(logits, bias_logits, weight, bias=None):
    """The official math: softmax over the groups, the (B, G, C, K, K) product, a sum over groups."""
    B = logits.shape[0]
    G, C, K, _ = weight.shape
    packed = logits.shape[-1] == K + 1
    scale = torch.softmax(logits[..., :K, :K].reshape(B, G, C, K, K), dim=1)
    weight_out = (scale * weight.unsqueeze(0)).sum(dim=1).to(logits.dtype)
    if bias is None:
        return weight_out, logits.new_empty(0)
    bias_logits = logits[..., K, K] if bias_logits is None and packed else bias_logits
    scale = torch.softmax(bias_logits.reshape(B, G, C), dim=1)
    return weight_out, (scale * bias.unsqueeze(0)).sum(dim=1).to(logits.dtype)


def _check(logits, bias_logits, weight, bias):
    named = [("logits", logits), ("bias_logits", bias_logits), ("weight", weight), ("bias", bias)]
    bad = [f"{n} must be a torch.Tensor{'' if n in ('logits', 'weight') else ' or None'}, got {type(t).__name__}"
           for n, t in named if not isinstance(t, torch.Tensor) and (t is not None or n in ("logits", "weight"))]
    if bad:
        raise TypeError("idconv_weights: invalid input:\n  - " + "\n  - ".join(bad))
    problems = []
    for n, t in named:
        if t is not None and (not t.is_floating_point() or t.device != logits.device):
            problems.append(f"{n} must be floating point on {logits.device}, got {t.dtype} on {t.device}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        problems.append(f"weight must be (G, C, K, K), got shape {tuple(weight.shape)}")
    else:
        G, C, K, _ = weight.shape
        sizes = ((K, K), (K + 1, K + 1))
        if logits.dim() != 4 or logits.shape[1] != G * C or tuple(logits.shape[2:]) not in sizes:
            problems.append(f"logits must be (B, G*C, K, K) or packed (B, G*C, K+1, K+1) with G*C = {G * C}, "
                            f"K = {K}, got shape {tuple(logits.shape)}")
        elif bias is not None and bias_logits is None and logits.shape[2] == K:
            problems.append("a bias needs bias_logits (B, G*C) or packed logits (B, G*C, K+1, K+1)")
        if bias is not None and tuple(bias.shape) != (G, C):
            problems.append(f"bias must be (G, C) = ({G}, {C}), got shape {tuple(bias.shape)}")
        if bias_logits is not None:
            if bias is None:
                problems.append("bias_logits given without a bias")
            if tuple(bias_logits.shape) != (logits.shape[0], G * C) or bias_logits.dtype != logits.dtype:
                problems.append(f"bias_logits must be ({logits.shape[0]}, {G * C}) in logits' dtype {logits.dtype}, "
                                f"got shape {tuple(bias_logits.shape)}, {bias_logits.dtype}")
    if problems:
        raise ValueError("idconv_weights: invalid input:\n  - " + "\n  - ".join(problems))
