"""PyTorch twins of every model in parity.specs, with torchvision's state_dict names (NCHW)."""

from __future__ import annotations

from torch import nn

from parity import specs
from torchnets.resnet import ResNet
from torchnets.vgg import VGG

__all__ = ["build", "list_models", "VGG", "ResNet"]

list_models = specs.list_models


def build(name: str, **overrides) -> nn.Module:
    """The torch model ``name`` (see parity.specs), initialised as torchvision does."""
    spec = specs.get(name, **overrides)
    return VGG(spec) if isinstance(spec, specs.VGGSpec) else ResNet(spec)
