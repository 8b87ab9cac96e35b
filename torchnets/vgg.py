"""VGG (Simonyan & Zisserman) with torchvision's module names, built from netspecs."""

from __future__ import annotations

import torch
from torch import nn

import netspecs
from torchnets import layers


class Features(nn.Sequential):
    """The conv stack: one Sequential entry per spec layer, so indices match torchvision."""

    def __init__(self, spec: netspecs.VGGSpec):
        mods, c = [], spec.in_channels
        for layer in spec.features():
            if layer.kind == "conv":
                mods.append(layers.conv(c, layer.out, layer.kernel, bias=True))
                c = layer.out
            elif layer.kind == "bn":
                mods.append(layers.batch_norm(layer.out))
            elif layer.kind == "relu":
                mods.append(nn.ReLU(inplace=True))
            elif layer.kind == "lrn":
                mods.append(layers.local_response_norm())
            else:
                mods.append(nn.MaxPool2d(kernel_size=2, stride=2))
        super().__init__(*mods)


class Classifier(nn.Sequential):
    """Linear-ReLU-Dropout twice, then the output Linear."""

    def __init__(self, spec: netspecs.VGGSpec):
        mods = []
        for layer in spec.classifier():
            if layer.kind == "linear":
                mods.append(nn.Linear(layer.inp, layer.out))
            elif layer.kind == "relu":
                mods.append(nn.ReLU(inplace=True))
            else:
                mods.append(nn.Dropout(p=spec.dropout))
        super().__init__(*mods)


class VGG(nn.Module):
    def __init__(self, spec: netspecs.VGGSpec):
        super().__init__()
        self.spec = spec
        self.features = Features(spec)
        self.avgpool = nn.AdaptiveAvgPool2d((spec.POOL_OUT, spec.POOL_OUT))
        self.classifier = Classifier(spec)
        layers.init_weights(self)
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(self, self.spec, x)
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
