"""Swap the official-style DynamicConv2d / Attention modules of an existing model for the fused ones.

A module is converted when its class is named DynamicConv2d or Attention *and* it carries the official
attributes (other libraries, timm included, have unrelated classes named Attention: those are left alone).
The fused module gets the same hyper-parameters, the same state (loaded with strict=True), the same
device, dtype and train/eval mode.
"""
from torch import nn

from .nn import IDConv2d, OSRA


def _is_official_idconv(m):
    return (type(m).__name__ == "DynamicConv2d"
            and all(hasattr(m, a) for a in ("weight", "proj", "pool", "K", "num_groups"))
            and isinstance(m.proj, nn.Sequential) and len(m.proj) == 2 and m.weight.dim() == 4)


def _is_official_osra(m):
    return (type(m).__name__ == "Attention"
            and all(hasattr(m, a) for a in ("q", "kv", "sr", "local_conv", "attn_drop", "dim", "num_heads",
                                            "scale", "sr_ratio")))


def _fused_idconv(m, backend):
    G, C, K, _ = m.weight.shape
    hidden = m.proj[1].in_channels
    # The official module keeps only dim // reduction_ratio; C // hidden reproduces that hidden size exactly.
    return IDConv2d(C, kernel_size=K, reduction_ratio=C // hidden, num_groups=G, bias=m.bias is not None,
                    backend=backend)


def _fused_osra(m, backend):
    fused = OSRA(m.dim, num_heads=m.num_heads, attn_drop=m.attn_drop.p, sr_ratio=m.sr_ratio, backend=backend)
    fused.scale = m.scale  # covers a custom qk_scale
    return fused


def _fused(m, backend):
    """The fused replacement of m, or None when m is not an official DynamicConv2d / Attention."""
    if _is_official_idconv(m):
        fused = _fused_idconv(m, backend)
    elif _is_official_osra(m):
        fused = _fused_osra(m, backend)
    else:
        return None
    p = next(m.parameters())
    fused.to(device=p.device, dtype=p.dtype)  # floating tensors only: num_batches_tracked stays int64
    fused.load_state_dict(m.state_dict(), strict=True)
    return fused.train(m.training)


def convert(model: nn.Module, backend=None) -> nn.Module:
    """Replace, in place, every official DynamicConv2d / Attention inside `model` with IDConv2d / OSRA holding
    the same state, and return the model. `backend` is stored on the new modules (None = global choice).

    If `model` itself is one of those modules it cannot be replaced in place: the fused module is returned.
    """
    top = _fused(model, backend)
    if top is not None:
        return top
    for name, child in list(model.named_children()):
        fused = _fused(child, backend)
        if fused is None:
            convert(child, backend)
        else:
            setattr(model, name, fused)  # works for Sequential / ModuleList children too (string index)
    return model
