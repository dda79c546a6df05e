"""OSRA's key/value reduce path: the tensor that the kv projection reads, fused.

Official path (sr_ratio > 1):  s = BN2(dw1x1(GELU(BN1(dwconv_{sr+3, stride sr}(x)))));  kv_in = local_conv(s) + s.
`osra_reduce` runs all of it as one custom op: in eval one kernel (BatchNorms folded on the fly, the "+ s"
residual folded into local_conv's centre tap, s recomputed on each tile's 1-pixel halo), in training three
(the batch statistics need a pass each before normalising) with the official semantics: biased variance to
normalise, unbiased for the running variance, momentum (or the cumulative average for momentum=None) and
num_batches_tracked, all updated by `reduce_keys` exactly as nn.BatchNorm2d does.
sr_ratio == 1: kv_in = local_conv(x) + x, one depthwise launch whose centre tap carries the residual.
Modules that do not have the official layout (other activations, affine-free BN...) run the module path.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import _ext, backends, ops

_NS = "transxnet_ops"


# ------------------------------------------------------------------------------------------------ backend choice
def resolve_backend(backend, device_type, op_name):
    """backends.resolve, with "cuda" served by the Triton kernels while `op_name` has no CUDA kernel here
    (the CUDA contract is declared in csrc/reduce/*.h), or by the reference math without Triton."""
    name = backends.resolve(backend, device_type)
    if name == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NS}::{op_name}", "CUDA"):
        return "triton" if _ext.has_triton() else "reference"
    return name


def _op(name, backend):
    return getattr(getattr(torch.ops, _NS), name + ("_triton" if backend == "triton" else ""))


# ------------------------------------------------------------------------------------------------ the op
def osra_reduce(x, conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight, bn2_weight,
                bn2_bias, bn2_running_mean, bn2_running_var, local_weight, local_bias, sr_ratio, eps1=1e-5, eps2=1e-5,
                training=False, backend=None):
    """OSRA's reduce path for sr_ratio > 1 -> (kv_in (B, C, Ho, Wo), stats (6, C)).

    x (B, C, H, W); conv1_weight (C, 1, sr+3, sr+3) (stride sr, padding (sr+3)//2, no bias); conv2_weight
    (C, 1, 1, 1); local_weight (C, 1, 3, 3), local_bias (C,); per BatchNorm (C,) weight, bias, running_mean,
    running_var. training: normalise with the batch statistics (else the running ones). stats rows: mean1, var1,
    var1_unbiased, mean2, var2, var2_unbiased (the batch statistics in training; running ones in eval); the
    running statistics are not updated here (see update_running_stats). Differentiable in x and every
    parameter. Parameters keep their own dtype (fp32 under autocast): only x follows autocast.
    """
    params = (conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight, bn2_weight,
              bn2_bias, bn2_running_mean, bn2_running_var, local_weight, local_bias)
    _check_osra_reduce(x, params, sr_ratio, training)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    name = resolve_backend(backend, x.device.type, "osra_reduce")
    if name == "reference":
        return reference_osra_reduce(x, *params, sr_ratio, eps1, eps2, training)
    # eval keeps u only when a backward will need it (training always does: three stages read it)
    save_u = training or (torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + params))
    out, _u, stats = _op("osra_reduce", name)(x, *params, int(sr_ratio), float(eps1), float(eps2), bool(training),
                                             bool(save_u))
    return out, stats


def reference_osra_reduce(x, conv1_weight, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, conv2_weight,
                          bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var, local_weight, local_bias, sr_ratio,
                          eps1=1e-5, eps2=1e-5, training=False):
    """The official module math (F.conv2d / F.batch_norm / F.gelu) with osra_reduce's outputs."""
    C, k = x.shape[1], sr_ratio + 3

    def bn(t, weight, bias, running_mean, running_var, eps):
        if not training:
            stats = [running_mean, running_var, running_var]
            return F.batch_norm(t, running_mean, running_var, weight, bias, False, 0.0, eps), stats
        var, mean = torch.var_mean(t, dim=(0, 2, 3), correction=0)
        n = t.numel() // C
        return F.batch_norm(t, None, None, weight, bias, True, 0.0, eps), [mean, var, var * n / (n - 1)]

    s = F.conv2d(x, conv1_weight.to(x.dtype), None, stride=sr_ratio, padding=k // 2, groups=C)
    s, stats1 = bn(s, bn1_weight, bn1_bias, bn1_running_mean, bn1_running_var, eps1)
    s = F.conv2d(F.gelu(s), conv2_weight.to(x.dtype), None, groups=C)
    s, stats2 = bn(s, bn2_weight, bn2_bias, bn2_running_mean, bn2_running_var, eps2)
    out = F.conv2d(s, local_weight.to(s.dtype), local_bias.to(s.dtype), padding=1, groups=C) + s
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return out, torch.stack([t.detach().to(acc_dtype) for t in stats1 + stats2])


def _check_osra_reduce(x, params, sr_ratio, training):
    names = ["conv1_weight", "bn1_weight", "bn1_bias", "bn1_running_mean", "bn1_running_var", "conv2_weight",
             "bn2_weight", "bn2_bias", "bn2_running_mean", "bn2_running_var", "local_weight", "local_bias"]
    bad = [f"{n} must be a torch.Tensor, got {type(t).__name__}"
           for n, t in [("x", x)] + list(zip(names, params)) if not isinstance(t, torch.Tensor)]
    if bad:
        raise TypeError("osra_reduce: invalid input:\n  - " + "\n  - ".join(bad))
    problems = []
    if x.dim() != 4 or not x.is_floating_point():
        problems.append(f"x must be a floating-point (B, C, H, W) tensor, got shape {tuple(x.shape)}, {x.dtype}")
    if not isinstance(sr_ratio, int) or sr_ratio < 2:
        problems.append(f"sr_ratio must be an int >= 2 (sr_ratio 1 is local_conv(x) + x), got {sr_ratio!r}")
    if not problems:
        C, k = x.shape[1], sr_ratio + 3
        shapes = [(C, 1, k, k)] + [(C,)] * 4 + [(C, 1, 1, 1)] + [(C,)] * 4 + [(C, 1, 3, 3), (C,)]
        for n, t, shape in zip(names, params, shapes):
            if tuple(t.shape) != shape or not t.is_floating_point() or t.device != x.device:
                problems.append(f"{n} must be a floating-point tensor of shape {shape} on {x.device}, got shape "
                                f"{tuple(t.shape)}, {t.dtype} on {t.device}")
        count = x.shape[0] * _reduced(x.shape[2], sr_ratio) * _reduced(x.shape[3], sr_ratio)
        if training and count <= 1:
            problems.append(f"BatchNorm training needs more than 1 value per channel, got B * Ho * Wo = {count} "
                            f"(x {tuple(x.shape)}, sr_ratio {sr_ratio})")
    if problems:
        raise ValueError("osra_reduce: invalid input:\n  - " + "\n  - ".join(problems))


def _reduced(size, sr_ratio):
    k = sr_ratio + 3
    return (size + 2 * (k // 2) - k) // sr_ratio + 1


def update_running_stats(bn1, bn2, stats):
    """nn.BatchNorm2d's training-mode update of both BatchNorms from osra_reduce's batch statistics:
    num_batches_tracked += 1, running = (1 - f) * running + f * batch with f = momentum (or 1/num_batches_tracked
    when momentum is None), the running variance from the unbiased batch variance."""
    torch._foreach_add_([bn1.num_batches_tracked, bn2.num_batches_tracked], 1)
    buffers = [bn1.running_mean, bn1.running_var, bn2.running_mean, bn2.running_var]
    if stats.dtype != buffers[0].dtype:
        stats = stats.to(buffers[0].dtype)
    batch = [stats[0], stats[2], stats[3], stats[5]]
    if bn1.momentum is not None and bn1.momentum == bn2.momentum:
        torch._foreach_lerp_(buffers, batch, bn1.momentum)  # one multi-tensor launch for all four
        return
    for bn, (mean, var) in ((bn1, batch[:2]), (bn2, batch[2:])):
        factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.to(mean.dtype)
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(var, factor)


# ------------------------------------------------------------------------------------------------ modules
def _is_official_bn(bn):
    return type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats


def _conv_bn_act(block):
    """(conv, bn, activation or None) of a block that computes act(bn(conv(x))): our ConvBN (a Sequential of
    exactly conv, bn[, activate]) or the official restatement's ConvModule; None for anything else."""
    cls = type(block)
    if cls.__name__ == "ConvModule" and cls.__module__ == "transxnet_ops.models.official":
        return block.conv, block.bn, block.activate
    if isinstance(block, nn.Sequential) and [n for n, _ in block.named_children()] in (["conv", "bn"],
                                                                                          ["conv", "bn", "activate"]):
        return block.conv, block.bn, getattr(block, "activate", None)
    return None


def fusable(sr, local_conv, sr_ratio):
    """The official layout: sr = [conv(k=sr+3, stride sr, pad k//2, depthwise, no bias) + BN + GELU,
    depthwise 1x1 conv (no bias) + BN], local_conv a biased 3x3 depthwise conv with padding 1."""
    if not isinstance(sr, nn.Sequential) or len(sr) != 2:
        return False
    first, second = _conv_bn_act(sr[0]), _conv_bn_act(sr[1])
    if first is None or second is None:
        return False
    (conv1, bn1, act), (conv2, bn2, act2) = first, second
    C, k = local_conv.in_channels, sr_ratio + 3
    plain = (type(act) is nn.GELU and act.approximate == "none" and act2 is None
             and _is_official_bn(bn1) and _is_official_bn(bn2) and bn1.training == bn2.training)
    depthwise = all(isinstance(c, nn.Conv2d) and c.groups == c.in_channels == c.out_channels == C
                    and c.dilation == (1, 1) and c.padding_mode == "zeros" for c in (conv1, conv2, local_conv))
    return (plain and depthwise and conv1.bias is None and conv2.bias is None and local_conv.bias is not None
            and conv1.kernel_size == (k, k) and conv1.stride == (sr_ratio, sr_ratio)
            and conv1.padding == (k // 2, k // 2) and conv2.kernel_size == (1, 1) and conv2.stride == (1, 1)
            and local_conv.kernel_size == (3, 3) and local_conv.stride == (1, 1) and local_conv.padding == (1, 1))


def residual_tap(local_conv):
    """A (C, 1, 3, 3) tensor that is 1 at the centre tap: local_conv.weight + it = local_conv(.) + identity."""
    tap = torch.zeros_like(local_conv.weight, requires_grad=False)
    tap[:, :, 1, 1] = 1
    return tap


def reduce_keys(x, sr, local_conv, sr_ratio, backend=None, centre_tap=None):
    """The tensor OSRA's kv projection reads: local_conv(s) + s with s = sr(x) (s = x for sr_ratio 1).
    In training the BatchNorms' running statistics are updated as the official modules do.
    centre_tap: residual_tap(local_conv), if the caller keeps one (saves building it per call)."""
    if sr_ratio == 1:
        tap = residual_tap(local_conv) if centre_tap is None else centre_tap
        return ops.dwconv2d(x, local_conv.weight + tap, local_conv.bias, backend=backend)
    name = resolve_backend(backend, x.device.type, "osra_reduce")
    if name == "reference" or not fusable(sr, local_conv, sr_ratio):
        s = sr(x)
        return local_conv(s) + s
    (conv1, bn1), (conv2, bn2) = (sr[0].conv, sr[0].bn), (sr[1].conv, sr[1].bn)
    out, stats = osra_reduce(x, conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var,
                             conv2.weight, bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var,
                             local_conv.weight, local_conv.bias, sr_ratio, bn1.eps, bn2.eps, bn1.training,
                             backend=name)
    if bn1.training:
        with torch.no_grad():
            update_running_stats(bn1, bn2, stats)
    return out
