"""Test-side access to the official TransXNet math: DynamicConv2d (IDConv), Attention (OSRA) and the whole network
are restated in transxnet_ops/models/official.py (models/transxnet.py of LMMMEng/TransXNet, commit ce2c73d, as it
computes them; pinned to the real official code by tests/test_official_model.py). Here: helpers that turn the
package's fused modules into their official twins with the same state.
"""
from transxnet_ops.models.official import Attention, ConvModule, DynamicConv2d, OfficialTransXNet  # noqa: F401
from transxnet_ops.nn import IDConv2d, OSRA


def official_like(fused):
    """The official-style module with the same hyper-parameters and state as an IDConv2d / OSRA."""
    if isinstance(fused, IDConv2d):
        C = fused.weight.shape[1]
        ref = DynamicConv2d(C, fused.K, fused.reduction_ratio, fused.num_groups, fused.bias is not None)
    elif isinstance(fused, OSRA):
        ref = Attention(fused.dim, fused.num_heads, attn_drop=fused.attn_drop.p, sr_ratio=fused.sr_ratio)
        ref.scale = fused.scale
    else:
        raise TypeError(type(fused))
    p = next(fused.parameters())
    ref.to(device=p.device, dtype=p.dtype).load_state_dict(fused.state_dict(), strict=True)
    return ref.train(fused.training)


def to_official(model):
    """Swap every IDConv2d / OSRA in `model` for its official-style twin, in place (the inverse of convert)."""
    for name, child in list(model.named_children()):
        if isinstance(child, (IDConv2d, OSRA)):
            setattr(model, name, official_like(child))
        else:
            to_official(child)
    return model
