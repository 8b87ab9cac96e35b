"""ResNet, ResNeXt, Wide ResNet, plain nets and the CIFAR ResNets, with torchvision's names."""

from __future__ import annotations

import torch
from torch import nn

import netspecs
from torchnets import layers


class Downsample(nn.Sequential):
    """Projection shortcut (options B and C): 1x1 conv with the block's stride, then BN."""

    def __init__(self, b: netspecs.Block):
        super().__init__(layers.conv(b.in_ch, b.out_ch, 1, b.stride), layers.batch_norm(b.out_ch))


def shortcut(b: netspecs.Block) -> nn.Module | None:
    if b.shortcut == "proj":
        return Downsample(b)
    if b.shortcut == "A":
        return layers.ShortcutA(b.in_ch, b.out_ch, b.stride)
    return None


class BasicBlock(nn.Module):
    def __init__(self, b: netspecs.Block, spec: netspecs.ResNetSpec):
        super().__init__()
        s1, s2 = spec.strides(b)
        self.conv1 = layers.conv(b.in_ch, b.width, 3, s1)
        self.bn1 = layers.batch_norm(b.width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = layers.conv(b.width, b.out_ch, 3, s2)
        self.bn2 = layers.batch_norm(b.out_ch)
        self.downsample = shortcut(b)
        self.residual = b.shortcut != "none"

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, b: netspecs.Block, spec: netspecs.ResNetSpec):
        super().__init__()
        s1, s2, s3 = spec.strides(b)
        self.conv1 = layers.conv(b.in_ch, b.width, 1, s1)
        self.bn1 = layers.batch_norm(b.width)
        self.conv2 = layers.conv(b.width, b.width, 3, s2, groups=spec.groups)
        self.bn2 = layers.batch_norm(b.width)
        self.conv3 = layers.conv(b.width, b.out_ch, 1, s3)
        self.bn3 = layers.batch_norm(b.out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(b)
        self.residual = b.shortcut != "none"

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Stage(nn.Sequential):
    """``layerN``: its blocks named 0, 1, ... as in torchvision."""

    def __init__(self, blocks: list[netspecs.Block], spec: netspecs.ResNetSpec):
        block = Bottleneck if spec.block == "bottleneck" else BasicBlock
        super().__init__(*[block(b, spec) for b in blocks])


class ResNet(nn.Module):
    def __init__(self, spec: netspecs.ResNetSpec):
        super().__init__()
        self.spec = spec
        stem = spec.stem()
        self.conv1 = layers.conv(spec.in_channels, spec.stem_width, stem.kernel, stem.stride)
        self.bn1 = layers.batch_norm(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = layers.max_pool_3x3() if stem.pool else nn.Identity()
        for i, blocks in enumerate(spec.stages(), start=1):
            setattr(self, f"layer{i}", Stage(blocks, spec))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(spec.last_channels, spec.num_classes)  # keeps torch's default init
        last_bns = [m.last_bn for m in self.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        layers.init_weights(self, last_bns if spec.zero_init_residual else [])

    def stages(self) -> list[Stage]:
        return [getattr(self, f"layer{i}") for i in range(1, len(self.spec.depths) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(self, self.spec, x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
