"""VGG in functional Flax Linen, path for path the twin of torchnets/vgg.py."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import netspecs
from jaxnets import layers


class Features(nn.Module):
    """The conv stack; each layer is named by its torch Sequential index."""

    spec: netspecs.VGGSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, layer in enumerate(self.spec.features()):
            if layer.kind == "conv":
                x = layers.conv(layer.out, layer.kernel, bias=True, name=str(i), conv_impl=self.conv_impl, **kw)(x)
            elif layer.kind == "bn":
                x = layers.BatchNorm(name=str(i), **kw)(x, train)
            elif layer.kind == "relu":
                x = nn.relu(x)
            elif layer.kind == "lrn":
                x = layers.local_response_norm(x)
            else:
                x = layers.max_pool_2x2(x)
        return x


class Classifier(nn.Module):
    """Linear-ReLU-Dropout twice, then the output Linear; init N(0, 0.01), bias 0."""

    spec: netspecs.VGGSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i, layer in enumerate(self.spec.classifier()):
            if layer.kind == "linear":
                x = nn.Dense(layer.out, kernel_init=nn.initializers.normal(0.01),
                             bias_init=nn.initializers.zeros, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=str(i))(x)
            elif layer.kind == "relu":
                x = nn.relu(x)
            else:
                x = nn.Dropout(self.spec.dropout, deterministic=not train)(x)
        return x


class VGG(nn.Module):
    spec: netspecs.VGGSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        layers.check_input(self, self.spec, x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Features(self.spec, conv_impl=self.conv_impl, name="features", **kw)(x, train)
        x = layers.adaptive_avg_pool(x, self.spec.POOL_OUT)
        # Flattens H, W, C (torch: C, H, W); the converter permutes classifier.0's rows.
        x = x.reshape(x.shape[0], -1)
        return Classifier(self.spec, name="classifier", **kw)(x, train)
