"""Swap the official-style DynamicConv2d / Attention modules of an existing model for the fused ones."""
from torch import nn

from .nn import IDConv2d, OSRA


def _fused_idconv(m, backend):
    G, C, K, _ = m.weight.shape
    reduction = C // m.proj[1].in_channels
    return IDConv2d(C, kernel_size=K, reduction_ratio=reduction, num_groups=G, bias=m.bias is not None,
                    backend=backend)


def _fused_osra(m, backend):
    fused = OSRA(m.dim, num_heads=m.num_heads, attn_drop=m.attn_drop.p, sr_ratio=m.sr_ratio, backend=backend)
    fused.scale = m.scale
    return fused


_CONVERTERS = {"DynamicConv2d": _fused_idconv, "Attention": _fused_osra}


def convert(model: nn.Module, backend=None) -> nn.Module:
    """Replace, in place, every module whose class is the official DynamicConv2d or Attention with IDConv2d /
    OSRA holding the same state (strict load), and return the model."""
    for name, child in list(model.named_children()):
        make = _CONVERTERS.get(type(child).__name__)
        if make is None or isinstance(child, (IDConv2d, OSRA)):
            convert(child, backend)
            continue
        fused = make(child, backend).to(next(child.parameters()).device)
        fused.load_state_dict(child.state_dict(), strict=True)
        fused.train(child.training)
        setattr(model, name, fused)
    return model
