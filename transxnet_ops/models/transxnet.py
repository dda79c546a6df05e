"""TransXNet-T/S/B with the fused IDConv and OSRA; state_dict layout of the official models/transxnet.py
(LMMMEng/TransXNet, commit ce2c73d), so official checkpoints load with strict=True."""
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


class TransXNet(nn.Module):
    """Classification TransXNet. `image_size` only sizes the relative-position encodings (as officially):
    other input sizes work, the encodings are bicubic-resized on the fly."""

    def __init__(self, arch="t", image_size=224, in_chans=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.0,
                 grad_checkpoint=False, backend=None):
        super().__init__()
        cfg = ARCHS[arch.lower()[0]] if isinstance(arch, str) else arch
        layers, dims = cfg["layers"], cfg["embed_dims"]
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(patch_size=7, stride=4, padding=3, in_chans=in_chans, embed_dim=dims[0])

        h = w = math.ceil(image_size / 4)
        encodings = []
        for i in range(4):
            sr = cfg["sr_ratio"][i]
            keys = math.ceil(h / sr) * math.ceil(w / sr)
            encodings.append(nn.Parameter(torch.zeros(1, cfg["num_heads"][i], h * w, keys)))
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.relative_pos_enc = nn.ParameterList(encodings)

        network, total, done = [], sum(layers), 0
        for i in range(4):
            network.append(nn.ModuleList(
                Block(dims[i], kernel_size=cfg["kernel_size"][i], sr_ratio=cfg["sr_ratio"][i],
                      num_groups=cfg["num_groups"][i], num_heads=cfg["num_heads"][i], mlp_ratio=cfg["mlp_ratios"][i],
                      drop=drop_rate, drop_path=drop_path_rate * (done + j) / (total - 1),
                      layer_scale_init_value=cfg["layer_scale_init_value"], grad_checkpoint=grad_checkpoint,
                      backend=backend)
                for j in range(layers[i])))
            done += layers[i]
            if i < 3:
                network.append(PatchEmbed(patch_size=3, stride=2, padding=1, in_chans=dims[i], embed_dim=dims[i + 1]))
        self.network = nn.ModuleList(network)
        self.classifier = nn.Sequential(nn.GroupNorm(1, dims[-1]), nn.AdaptiveAvgPool2d(1),
                                        nn.Conv2d(dims[-1], num_classes, kernel_size=1)) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.patch_embed(x)
        for idx, layer in enumerate(self.network):
            if idx % 2 == 0:  # stages sit at even indices, downsampling in between
                for block in layer:
                    x = block(x, self.relative_pos_enc[idx // 2])
            else:
                x = layer(x)
        return x

    def forward(self, x):
        return self.classifier(self.forward_features(x)).flatten(1)


def transxnet_t(num_classes=1000, **kwargs):
    return TransXNet("t", num_classes=num_classes, **kwargs)


def transxnet_s(num_classes=1000, **kwargs):
    return TransXNet("s", num_classes=num_classes, **kwargs)


def transxnet_b(num_classes=1000, **kwargs):
    return TransXNet("b", num_classes=num_classes, **kwargs)


try:  # optional: make the models available through timm.create_model
    from timm.models import register_model as _register

    for _fn in (transxnet_t, transxnet_s, transxnet_b):
        _register(_fn)
except Exception:  # timm missing or with an incompatible registry: nothing to register
    pass
