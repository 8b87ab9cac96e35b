"""PyTorch twins of every model in netspecs, with torchvision's state_dict names (NCHW)."""

from __future__ import annotations

from torch import nn

import netspecs
from torchnets.resnet import ResNet
from torchnets.vgg import VGG

__all__ = ["build", "list_models", "VGG", "ResNet"]

list_models = netspecs.list_models


def build(name: str, **overrides) -> nn.Module:
    """The torch model ``name`` (see netspecs), initialised as torchvision does."""
    spec = netspecs.get(name, **overrides)
    return VGG(spec) if isinstance(spec, netspecs.VGGSpec) else ResNet(spec)
