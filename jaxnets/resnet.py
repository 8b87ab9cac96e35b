"""ResNet family in functional Flax Linen, path for path the twin of torchnets/resnet.py."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import netspecs
from jaxnets import layers


class Downsample(nn.Module):
    """Projection shortcut (options B and C): 1x1 conv with the block's stride, then BN."""

    b: netspecs.Block
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.conv(self.b.out_ch, 1, self.b.stride, name="0", conv_impl=self.conv_impl, **kw)(x)
        return layers.BatchNorm(name="1", **kw)(x, train)


def shortcut(block: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    b = block.b
    if b.shortcut == "proj":
        return Downsample(b, block.dtype, block.param_dtype, block.conv_impl, name="downsample")(x, train)
    if b.shortcut == "A":
        return layers.shortcut_a(x, b.out_ch, b.stride)
    return x


def _last_bn_init(spec: netspecs.ResNetSpec):
    return nn.initializers.zeros if spec.zero_init_residual else nn.initializers.ones


class BasicBlock(nn.Module):
    b: netspecs.Block
    spec: netspecs.ResNetSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, kw = self.b, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ck = dict(kw, conv_impl=self.conv_impl)
        s1, s2 = self.spec.strides(b)
        out = layers.conv(b.width, 3, s1, name="conv1", **ck)(x)
        out = nn.relu(layers.BatchNorm(name="bn1", **kw)(out, train))
        out = layers.conv(b.out_ch, 3, s2, name="conv2", **ck)(out)
        out = layers.BatchNorm(scale_init=_last_bn_init(self.spec), name="bn2", **kw)(out, train)
        if b.shortcut != "none":
            out = out + shortcut(self, x, train)
        return nn.relu(out)


class Bottleneck(nn.Module):
    b: netspecs.Block
    spec: netspecs.ResNetSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, kw = self.b, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ck = dict(kw, conv_impl=self.conv_impl)
        s1, s2, s3 = self.spec.strides(b)
        out = layers.conv(b.width, 1, s1, name="conv1", **ck)(x)
        out = nn.relu(layers.BatchNorm(name="bn1", **kw)(out, train))
        out = layers.conv(b.width, 3, s2, groups=self.spec.groups, name="conv2", **ck)(out)
        out = nn.relu(layers.BatchNorm(name="bn2", **kw)(out, train))
        out = layers.conv(b.out_ch, 1, s3, name="conv3", **ck)(out)
        out = layers.BatchNorm(scale_init=_last_bn_init(self.spec), name="bn3", **kw)(out, train)
        if b.shortcut != "none":
            out = out + shortcut(self, x, train)
        return nn.relu(out)


class Stage(nn.Module):
    """``layerN``: its blocks named 0, 1, ... as in torchvision."""

    blocks: tuple[netspecs.Block, ...]
    spec: netspecs.ResNetSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        block = Bottleneck if self.spec.block == "bottleneck" else BasicBlock
        for i, b in enumerate(self.blocks):
            x = block(b, self.spec, self.dtype, self.param_dtype, self.conv_impl, name=str(i))(x, train)
        return x


class ResNet(nn.Module):
    spec: netspecs.ResNetSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        layers.check_input(self, spec, x)
        stem = spec.stem()
        x = layers.conv(spec.stem_width, stem.kernel, stem.stride, name="conv1", conv_impl=self.conv_impl, **kw)(x)
        x = nn.relu(layers.BatchNorm(name="bn1", **kw)(x, train))
        if stem.pool:
            x = layers.max_pool_3x3(x)
        for i, blocks in enumerate(spec.stages(), start=1):
            x = Stage(tuple(blocks), spec, conv_impl=self.conv_impl, name=f"layer{i}", **kw)(x, train)
        x = layers.global_avg_pool(x, self.conv_impl, train)
        init = layers.torch_linear_init(x.shape[-1])  # torch's default Linear init, as torchvision
        return nn.Dense(spec.num_classes, kernel_init=init, bias_init=init, name="fc", **kw)(x)
