"""The PyTorch side of every framework difference; the Flax side is jaxnets/layers.py."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

import netspecs

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention: new = (1 - m) * old + m * batch
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # VGG paper; torch divides alpha by size


def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A k x k conv padded k // 2 on every side (torch pads symmetrically, also at stride 2)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


def batch_norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def local_response_norm() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(**LRN)


def max_pool_3x3() -> nn.MaxPool2d:
    """The ResNet stem pool: 3x3 stride 2 pad 1 (torch pads with -inf)."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class ShortcutA(nn.Module):
    """Option A (paper 3.3): subsample by the stride, append zero channels; no parameters."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))


def init_weights(model: nn.Module, zero_init_residual_bns: list[nn.BatchNorm2d] = ()) -> None:
    """torchvision's scheme: conv kaiming-normal fan_out, BN 1/0; Linear layers keep their init
    unless the model set them (VGG: N(0, 0.01), ResNet: torch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for bn in zero_init_residual_bns:
        nn.init.zeros_(bn.weight)


def check_input(model: nn.Module, spec: netspecs.Spec, x: torch.Tensor) -> None:
    """ValueError naming expected vs got (see netspecs.check_input); nothing while torch.fx traces."""
    if isinstance(x, torch.fx.Proxy):
        return
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{spec.name}: expected a torch.Tensor, got {type(x).__name__}")
    param_dtype = next(model.parameters()).dtype
    netspecs.check_input(spec, tuple(x.shape), _name(x.dtype), _name(param_dtype), "NCHW",
                      _name(torch.get_autocast_dtype(x.device.type))
                      if torch.is_autocast_enabled(x.device.type) else None)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")

