"""1x1 convolutions and eval-mode BatchNorm folding for the TransXNet blocks (plain PyTorch ops, autograd and
torch.compile as usual; parameters and state_dicts stay those of the nn.Conv2d / nn.BatchNorm2d modules).

Why: on CPU, oneDNN's convolution backward is slow when a 1x1 conv has few input or output channels (the
token mixer's dim -> max(16, dim/8) -> dim pair, IDConv's weight generator on the pooled map, OSRA's q/kv
projections at stages 0-1): 4-90x slower than the same product as a batched matmul on (B, C, H*W). Wide
1x1 convs (MS-FFN fc1/fc2) stay on oneDNN, which is 2x faster than the matmul there. GPUs keep cuDNN.

In eval mode a BatchNorm is a per-channel affine map: folded into the neighbouring 1x1 / KxK conv's weight
and bias (training mode keeps the exact BatchNorm semantics). The folded weights are built per call; inside
`cached_folding()` (opt-in, for deployed inference) they are kept per parameter state instead (`memo`).
In CPU fp32 inference a wide 1x1 conv followed by an exact GELU (MS-FFN fc1) is one oneDNN convolution with an
erf-GELU post-op (`conv1x1_gelu`): one pass less over the 4x-wide hidden map.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

_cache_folding = False


# ------------------------------------------------------------------------------------------------ 1x1 conv
# oneDNN's 1x1 conv costs ~0.25 ms per call on CPU beyond its arithmetic (eager weight and layout reorders), so a
# GEMM this small runs faster as a batched matmul whatever its channel counts (TransXNet-T's OSRA and STE 1x1
# convs; 2 threads: 112->112 @7^2 batch 4 0.27 -> 0.09 ms inference, 0.81 -> 0.34 ms fwd+bwd; parity near 20M).
SMALL_GEMM_MACS = 12_000_000


def matmul_pays(x, in_channels, out_channels):
    """Whether a 1x1 conv on x runs faster as a batched matmul: CPU, NCHW-contiguous, and either a small GEMM
    (<= SMALL_GEMM_MACS multiply-adds) or one narrow side (< 64 channels) with no wide side (<= 128) or a small
    map (<= 256 positions; measured on TransXNet-T shapes, 2 threads: e.g. 48->16 @56^2 fwd+bwd 11.9 -> 1.0 ms,
    while 192->48 @56^2 is faster on oneDNN)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return False
    B, _, H, W = x.shape
    small_map = H * W <= 256
    if not (_batched_nchw(x) or small_map):  # a large channels_last map: not worth the copy
        return False
    if B * H * W * in_channels * out_channels <= SMALL_GEMM_MACS:
        return True
    return min(in_channels, out_channels) < 64 and (max(in_channels, out_channels) <= 128 or small_map)


def _batched_nchw(x):
    """x views as (B, C, H*W) with unit stride along H*W (contiguous, or a channel slice of a contiguous tensor
    such as torch.chunk(x, 2, dim=1) makes)."""
    _, C, H, W = x.shape
    return x.stride(3) == 1 and (H == 1 or x.stride(2) == W) and (C == 1 or x.stride(1) == H * W)


def conv1x1(x, weight, bias=None, residual=None):
    """residual + conv1x1(x, weight, bias). x (B, Ci, H, W); weight (Co, Ci, 1, 1) or (Co, Ci); bias (Co,)
    or None; residual (B, Co, H, W) or None."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    w = weight.reshape(Co, Ci)
    if not matmul_pays(x, Ci, Co):
        y = F.conv2d(x, w.view(Co, Ci, 1, 1), bias)
        return y if residual is None else y + residual
    xv = x.reshape(B, Ci, H * W)
    fuse_residual = residual is not None and _batched_nchw(residual) and not torch.is_autocast_enabled("cpu")
    if fuse_residual:  # autocast would cast the residual stream down: add it separately then
        y = torch.baddbmm(residual.reshape(B, Co, H * W), w.expand(B, Co, Ci), xv)
        if bias is not None:
            y = y + bias.view(1, Co, 1)
        return y.reshape(B, Co, H, W)
    if bias is None:
        y = torch.bmm(w.expand(B, Co, Ci), xv)  # bmm, not matmul: matmul's fold to mm relies on strides
    else:
        y = torch.baddbmm(bias.view(1, Co, 1), w.expand(B, Co, Ci), xv)
    y = y.reshape(B, Co, H, W)
    return y if residual is None else y + residual


def conv1x1_tokens(x, weight, bias=None):
    """The 1x1 conv's output token-major: (B, H*W, Co), i.e. x^T W^T (one GEMM with a transposed operand, no
    copy); what an attention kernel reads as (B, heads, N, d) when heads == 1."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    w = weight.reshape(Co, Ci)
    if matmul_pays(x, Ci, Co):
        xt = x.reshape(B, Ci, H * W).transpose(1, 2)
        if bias is None:
            return torch.bmm(xt, w.t().expand(B, Ci, Co))
        return torch.baddbmm(bias.view(1, 1, Co), xt, w.t().expand(B, Ci, Co))
    return F.conv2d(x, w.view(Co, Ci, 1, 1), bias).flatten(2).transpose(1, 2)


def is_conv1x1(m):
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding == (0, 0)
            and m.dilation == (1, 1) and m.groups == 1)


def run(modules, x):
    """nn.Sequential-like: every plain 1x1 nn.Conv2d through conv1x1 (and through conv1x1_gelu when an
    exact nn.GELU follows it), the other modules as they are."""
    modules = list(modules)
    i = 0
    while i < len(modules):
        m = modules[i]
        if is_conv1x1(m) and i + 1 < len(modules) and is_exact_gelu(modules[i + 1]):
            x, i = conv1x1_gelu(x, m.weight, m.bias), i + 2
            continue
        x, i = (conv1x1(x, m.weight, m.bias) if is_conv1x1(m) else m(x)), i + 1
    return x


# ------------------------------------------------------------------------------------------------ 1x1 conv + GELU
def is_exact_gelu(m):
    return type(m) is nn.GELU and m.approximate == "none"


def onednn_gelu_pays(x, weight, bias=None):
    """Whether gelu(conv(x)) can run as one oneDNN convolution with an erf-GELU post-op: CPU fp32 inference
    (no autograd, no autocast), eager (torch.compile fuses the GELU itself), and a wide 1x1 conv that stays on
    oneDNN anyway (MS-FFN fc1: saves the GELU's separate pass over the 4x-wide hidden map)."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    return (not needs_grad and not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu") and _ONEDNN_CONV_POINTWISE is not None
            and torch.backends.mkldnn.enabled and not matmul_pays(x, weight.shape[1], weight.shape[0]))


def _onednn_conv_pointwise():
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


_ONEDNN_CONV_POINTWISE = _onednn_conv_pointwise()


def conv1x1_gelu(x, weight, bias=None):
    """F.gelu(conv1x1(x, weight, bias)) (exact, erf GELU); fused into oneDNN's convolution in CPU inference."""
    Co, Ci = weight.shape[0], x.shape[1]
    if onednn_gelu_pays(x, weight, bias):
        # algorithm "none": oneDNN's eltwise_gelu_erf, the exact GELU F.gelu computes
        return _ONEDNN_CONV_POINTWISE(x, weight.reshape(Co, Ci, 1, 1), bias, [0, 0], [1, 1], [1, 1], 1,
                                      "gelu", [], "none")
    return F.gelu(conv1x1(x, weight, bias))


# ------------------------------------------------------------------------------------------------ BN folding
@contextlib.contextmanager
def cached_folding(enabled=True):
    """Keep eval-time folded weights between calls (`memo`): ~6% of a TransXNet-T CPU inference step (some 300
    tiny ops). Opt-in because one kind of update is invisible to it: an in-place write through `param.data`
    (`p.data.copy_(...)`, as some EMA helpers do) does not bump the parameter's version counter, so the cache
    would keep serving the old folded weights. Optimizer steps, `load_state_dict`, `.to()` and `p.data = ...`
    are all seen."""
    global _cache_folding
    previous, _cache_folding = _cache_folding, enabled
    try:
        yield
    finally:
        _cache_folding = previous


def memo(owner, name, sources, make):
    """make(), kept on `owner` per state of `sources` (modules: their own parameters and buffers; tensors; None):
    eval-time folded weights are built once, not per call (some 300 tiny ops per TransXNet-T forward).

    A new value follows any in-place update of a source (version counter: optimizer steps, load_state_dict) or a
    replaced storage (.to(), param.data = ...; the old storage is held, so its address cannot be reused). Bypassed
    when autograd may need the sources' gradients, and under torch.compile (the traced graph folds by itself).
    Active only inside `cached_folding()`."""
    if not _cache_folding or torch.compiler.is_compiling():
        return make()
    tensors = []
    for src in sources:
        if isinstance(src, nn.Module):
            tensors += [t for t in src._parameters.values() if t is not None]
            tensors += [t for t in src._buffers.values() if t is not None]
        elif src is not None:
            tensors.append(src)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return make()
    try:
        key = [(t.data_ptr(), t._version) for t in tensors]
    except RuntimeError:  # e.g. inference tensors (no version counter), functorch wrappers (no storage)
        return make()
    cache = owner.__dict__.setdefault("_transxnet_memo", {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable later under autograd too
        value = make()
    cache[name] = (key, value, [t.untyped_storage() for t in tensors])
    return value


def folds(bn):
    """An nn.BatchNorm2d that is a fixed per-channel affine map now (eval mode with running statistics)."""
    return isinstance(bn, nn.BatchNorm2d) and not bn.training and bn.running_mean is not None


def bn_affine(bn):
    """(scale, shift) with bn(x) == x * scale + shift per channel (eval mode)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold_1x1(conv, before=None, after=None, out_scale=None, out_shift=None):
    """(weight (Co, Ci), bias (Co,)) of  out_scale * after(conv(before(x))) + out_shift, where `before` and
    `after` are eval-mode BatchNorms (or None) and out_scale / out_shift per-channel tensors (or None)."""
    w = conv.weight.reshape(conv.out_channels, conv.in_channels)
    b = conv.bias
    if before is not None:
        s, t = bn_affine(before)
        b = w @ t if b is None else b + w @ t
        w = w * s
    if after is not None:
        s, t = bn_affine(after)
        w = w * s[:, None]
        b = t if b is None else b * s + t
    if out_scale is not None:
        w = w * out_scale[:, None]
        b = None if b is None else b * out_scale
    if out_shift is not None:
        b = out_shift if b is None else b + out_shift
    return w, b


def conv_bn(conv, bn, x):
    """bn(conv(x)) for any nn.Conv2d; the BatchNorm folded into the conv in eval mode, 1x1 via conv1x1."""
    if folds(bn):
        weight, shift = memo(bn, "conv_bn", (conv, bn), lambda: _fold_conv_bn(conv, bn))
        if is_conv1x1(conv):
            return conv1x1(x, weight, shift)
        return conv._conv_forward(x, weight, shift)
    return bn(conv1x1(x, conv.weight, conv.bias) if is_conv1x1(conv) else conv(x))


def _fold_conv_bn(conv, bn):
    scale, shift = bn_affine(bn)
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), shift
