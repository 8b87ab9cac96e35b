"""Flax Linen twins of every model in netspecs (NHWC), path for path torchnets' names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

import netspecs
from jaxnets import layers
from jaxnets.resnet import ResNet
from jaxnets.vgg import VGG

__all__ = ["build", "list_models", "VGG", "ResNet"]

list_models = netspecs.list_models


def build(name: str, *, dtype: Any = None, param_dtype: Any = jnp.float32, conv_impl: str = "auto",
          **overrides) -> nn.Module:
    """The Flax model ``name`` (see netspecs); ``dtype`` is the compute dtype (e.g. bfloat16).

    ``conv_impl``: "auto" (default) computes the convolutions XLA:CPU would run in its slow
    swapped form as one dot over kernel taps (jaxnets.layers.conv_general_dilated), and in eval mode
    keeps YNNPACK's fusion from taking the last convolutions (jaxnets.layers.global_avg_pool); "xla"
    uses lax.conv_general_dilated everywhere and nothing else. Same parameters, same math."""
    if conv_impl not in layers.CONV_IMPLS:
        raise ValueError(f"conv_impl: expected one of {layers.CONV_IMPLS}, got {conv_impl!r}")
    spec = netspecs.get(name, **overrides)
    cls = VGG if isinstance(spec, netspecs.VGGSpec) else ResNet
    return cls(spec, dtype=dtype, param_dtype=param_dtype, conv_impl=conv_impl)
