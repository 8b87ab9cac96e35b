"""A small convolutional net that is not one of the twins, written in both frameworks: a strided
stem, BatchNorm, a depthwise 7x7 conv, GroupNorm, a grouped 1x1 conv, exact GELU, a channels-last
LayerNorm, a strided 2x2 conv and a flatten into a Linear head. Flax names mirror torch's, so
``parity.check_pair`` moves the weights by rule.

``FlaxConvNet(bug=...)`` plants one classic porting bug (``BUGS``) for the tests.
"""

from __future__ import annotations

import flax.linen as fnn
import jax.numpy as jnp
import torch
from torch import nn

from jaxnets.layers import BatchNorm  # torch's BatchNorm semantics in Flax (flax.linen.BatchNorm's differ)

BUGS = ("layernorm_eps", "gelu_tanh", "same_padding", "depthwise_groups", "flatten_order", "stock_batchnorm")


class TorchConvNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 7, padding=3, groups=32)
        self.norm = nn.GroupNorm(8, 32)
        self.pw = nn.Conv2d(32, 64, 1, groups=4)
        self.act = nn.GELU()
        self.ln = nn.LayerNorm(64)
        self.down = nn.Conv2d(64, 64, 2, stride=2)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(64 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.act(self.pw(self.norm(self.dw(x))))
        x = self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels
        return self.head(self.flatten(self.down(x)))


class FlaxConvNet(fnn.Module):
    num_classes: int = 10
    bug: str | None = None

    @fnn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        bug = self.bug
        stem_pad = "SAME" if bug == "same_padding" else ((1, 1), (1, 1))
        x = fnn.Conv(32, (3, 3), strides=2, padding=stem_pad, name="stem")(x)
        if bug == "stock_batchnorm":
            x = fnn.BatchNorm(use_running_average=not train, name="bn")(x)
        else:
            x = BatchNorm(name="bn")(x, train)
        x = fnn.relu(x)
        groups = 1 if bug == "depthwise_groups" else 32
        x = fnn.Conv(32, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=groups, name="dw")(x)
        x = fnn.GroupNorm(num_groups=8, epsilon=1e-5, name="norm")(x)
        x = fnn.Conv(64, (1, 1), feature_group_count=4, name="pw")(x)
        x = fnn.gelu(x, approximate=bug == "gelu_tanh")
        x = fnn.LayerNorm(epsilon=1e-6 if bug == "layernorm_eps" else 1e-5, name="ln")(x)
        x = fnn.Conv(64, (2, 2), strides=2, padding="VALID", name="down")(x)
        if bug != "flatten_order":
            x = x.transpose(0, 3, 1, 2)  # torch flattens (C, H, W)
        return fnn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))
