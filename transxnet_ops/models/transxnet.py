"""TransXNet-T/S/B with the fused IDConv and OSRA; state_dict layout of the official models/transxnet.py
(LMMMEng/TransXNet, commit ce2c73d), so official checkpoints load with strict=True.

Layout: patch_embed (7x7/4 conv + BN); relative_pos_enc.{0..3} (1, heads, N, M), one per stage, shared by
its blocks; network = [stage 0, downsample, stage 1, downsample, stage 2, downsample, stage 3];
classifier = GroupNorm(1, C) -> global average pool -> 1x1 conv (or, with fork_feat=True, norm0/2/4/6).
"""
import math

import torch
from torch import nn

from ..nn import Block, PatchEmbed

ARCHS = {
    "t": dict(layers=[3, 3, 9, 3], embed_dims=[48, 96, 224, 448], kernel_size=[7] * 4, num_groups=[2, 2, 2, 2],
              sr_ratio=[8, 4, 2, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[4, 4, 4, 4], layer_scale_init_value=1e-5),
    "s": dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512], kernel_size=[7] * 4, num_groups=[2, 2, 3, 4],
              sr_ratio=[8, 4, 2, 1], num_heads=[1, 2, 5, 8], mlp_ratios=[6, 6, 4, 4], layer_scale_init_value=1e-5),
    "b": dict(layers=[4, 4, 21, 4], embed_dims=[76, 152, 336, 672], kernel_size=[7] * 4, num_groups=[2, 2, 4, 4],
              sr_ratio=[8, 4, 2, 1], num_heads=[2, 4, 8, 16], mlp_ratios=[8, 8, 4, 4], layer_scale_init_value=1e-5),
}
_ARCH_NAMES = {"t": "t", "tiny": "t", "T": "t", "s": "s", "small": "s", "S": "s", "b": "b", "base": "b", "B": "b"}
STAGE_INDICES = (0, 2, 4, 6)  # positions of the stages in `network`; downsampling layers sit in between


def _arch(arch):
    if isinstance(arch, dict):
        missing = {"layers", "embed_dims", "kernel_size", "num_groups", "sr_ratio", "num_heads"} - set(arch)
        if missing:
            raise ValueError(f"arch dict lacks {sorted(missing)}")
        return dict(dict(mlp_ratios=[4] * 4, layer_scale_init_value=1e-5), **arch)
    if arch not in _ARCH_NAMES:
        raise ValueError(f"unknown arch {arch!r}: choose from {sorted(_ARCH_NAMES)} or pass a dict")
    return ARCHS[_ARCH_NAMES[arch]]


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class TransXNet(nn.Module):
    """TransXNet classifier (fork_feat=False) or dense-prediction backbone (fork_feat=True: returns the four
    stage outputs, each through its own GroupNorm norm0/norm2/norm4/norm6 as officially; stages before
    `start_level` get an Identity).

    `image_size` only sizes the relative-position encodings, as officially: other input sizes work, the
    encodings are bicubic-resized on the fly. `backend` is passed to every IDConv2d / OSRA.
    """

    def __init__(self, arch="t", image_size=224, in_chans=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.0,
                 grad_checkpoint=False, fork_feat=False, start_level=0, backend=None):
        super().__init__()
        cfg = _arch(arch)
        layers, dims = cfg["layers"], cfg["embed_dims"]
        self.fork_feat = fork_feat
        if not fork_feat:
            self.num_classes = num_classes
        self.patch_embed = PatchEmbed(patch_size=7, stride=4, padding=3, in_chans=in_chans, embed_dim=dims[0])
        self.relative_pos_enc = self._position_encodings(_pair(image_size), cfg)

        network, total, done = [], sum(layers), 0
        for i in range(4):
            network.append(nn.ModuleList(
                Block(dims[i], kernel_size=cfg["kernel_size"][i], sr_ratio=cfg["sr_ratio"][i],
                      num_groups=cfg["num_groups"][i], num_heads=cfg["num_heads"][i], mlp_ratio=cfg["mlp_ratios"][i],
                      drop=drop_rate, drop_path=drop_path_rate * (done + j) / max(total - 1, 1),
                      layer_scale_init_value=cfg["layer_scale_init_value"], grad_checkpoint=grad_checkpoint,
                      backend=backend)
                for j in range(layers[i])))
            done += layers[i]
            if i < 3:
                network.append(PatchEmbed(patch_size=3, stride=2, padding=1, in_chans=dims[i], embed_dim=dims[i + 1]))
        self.network = nn.ModuleList(network)

        if fork_feat:
            for level, idx in enumerate(STAGE_INDICES):
                norm = nn.Identity() if level < start_level else nn.GroupNorm(1, dims[level])
                self.add_module(f"norm{idx}", norm)
        else:
            self.classifier = nn.Sequential(
                nn.GroupNorm(1, dims[-1]), nn.AdaptiveAvgPool2d(1), nn.Conv2d(dims[-1], num_classes, kernel_size=1),
            ) if num_classes > 0 else nn.Identity()
        self.apply(self._init_model_weights)

    @staticmethod
    def _position_encodings(image_size, cfg):
        """One zero-initialised (1, heads, N, M) parameter per stage: N queries at that stage's resolution,
        M = ceil(h / sr) * ceil(w / sr) keys."""
        h, w = math.ceil(image_size[0] / 4), math.ceil(image_size[1] / 4)  # after the stride-4 stem
        encodings = []
        for i in range(4):
            sr = cfg["sr_ratio"][i]
            keys = math.ceil(h / sr) * math.ceil(w / sr)
            encodings.append(nn.Parameter(torch.zeros(1, cfg["num_heads"][i], h * w, keys)))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return nn.ParameterList(encodings)

    @staticmethod
    def _init_model_weights(m):
        """The official init: truncated-normal (std 0.02) conv weights, zero conv biases, unit/zero norms."""
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_classifier(self):
        return self.classifier

    def forward_features(self, x):
        """The last stage's feature map (fork_feat=False) or the list of the four normed stage outputs."""
        x = self.patch_embed(x)
        outs = []
        for idx, layer in enumerate(self.network):
            if idx in STAGE_INDICES:
                for block in layer:
                    x = block(x, self.relative_pos_enc[idx // 2])
                if self.fork_feat:
                    outs.append(getattr(self, f"norm{idx}")(x))
            else:
                x = layer(x)
        return outs if self.fork_feat else x

    def forward(self, x):
        x = self.forward_features(x)
        return x if self.fork_feat else self.classifier(x).flatten(1)


def transxnet_t(num_classes=1000, image_size=224, drop_path_rate=0.0, backend=None, **kwargs):
    """TransXNet-T (12.8M parameters)."""
    return TransXNet("t", image_size=image_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                     backend=backend, **kwargs)


def transxnet_s(num_classes=1000, image_size=224, drop_path_rate=0.0, backend=None, **kwargs):
    """TransXNet-S (26.9M parameters)."""
    return TransXNet("s", image_size=image_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                     backend=backend, **kwargs)


def transxnet_b(num_classes=1000, image_size=224, drop_path_rate=0.0, backend=None, **kwargs):
    """TransXNet-B (48.0M parameters)."""
    return TransXNet("b", image_size=image_size, num_classes=num_classes, drop_path_rate=drop_path_rate,
                     backend=backend, **kwargs)


_TIMM_LOADER_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_entry(builder):
    """timm.create_model passes pretrained and weight-loading options (pretrained_cfg, ..., cache_dir): accept
    and drop them; weights are not downloaded here (load an official checkpoint with
    load_state_dict(strict=True) instead)."""

    def entry(pretrained=False, **kwargs):
        if pretrained:
            raise ValueError("transxnet_ops does not download weights: build the model, then "
                             "load_state_dict(official_checkpoint, strict=True)")
        for key in _TIMM_LOADER_KWARGS:
            kwargs.pop(key, None)
        return builder(**kwargs)

    entry.__name__ = entry.__qualname__ = builder.__name__
    entry.__doc__ = builder.__doc__
    return entry


def _register_with_timm():
    """Make the models available through timm.create_model when timm is installed (never required)."""
    try:
        from timm.models import register_model
    except Exception:  # timm missing or broken: nothing to register
        return
    for builder in (transxnet_t, transxnet_s, transxnet_b):
        try:
            register_model(_timm_entry(builder))
        except Exception:  # an incompatible registry must not break importing transxnet_ops
            pass


_register_with_timm()
