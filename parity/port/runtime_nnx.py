"""The helper layers of a port written with ``api="nnx"``: ``parity.port.runtime``'s Linen layers as
``flax.nnx`` modules, the same parameter names and torch's semantics. Train or eval mode follows
``model.train()`` / ``model.eval()`` as for NNX's own layers (``use_running_average``,
``deterministic``). A port copies the ones it uses into its file, beside ``jaxnets.layers``'
``batch_norm_train``; this module imports only jax, flax and the standard library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
    """torch's BatchNorm over the last axis (as ``jaxnets.layers.BatchNorm``): momentum weighs the new
    batch (None: the cumulative average), the running variance is unbiased, a batch counter; normalises
    with the batch statistics after ``model.train()``, with the running ones after ``model.eval()``."""

    def __init__(self, num_features: int, *, momentum: float | None = 0.1, epsilon: float = 1e-5,
                 affine: bool = True, track_running_stats: bool = True, use_running_average: bool = False,
                 rngs: nnx.Rngs | None = None):
        self.momentum, self.epsilon = momentum, epsilon
        self.affine, self.track_running_stats = affine, track_running_stats
        self.use_running_average = use_running_average
        if affine:
            self.scale = nnx.Param(jnp.ones((num_features,)))
            self.bias = nnx.Param(jnp.zeros((num_features,)))
        if track_running_stats:
            self.mean = nnx.BatchStat(jnp.zeros((num_features,)))
            self.var = nnx.BatchStat(jnp.ones((num_features,)))
            self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.scale[...] if self.affine else jnp.ones((c,), jnp.float32)
        bias = self.bias[...] if self.affine else jnp.zeros((c,), jnp.float32)
        if not self.track_running_stats:  # torch then normalises with the batch in both modes
            xs = x.astype(jnp.promote_types(scale.dtype, jnp.float32))
            return batch_norm_train(xs, scale, bias, self.epsilon)[0].astype(x.dtype)  # noqa: F821 - from jaxnets.layers
        # statistics in at least float32 (as torch autocast does for batch_norm), in the statistics' dtype
        stat_dtype = jnp.promote_types(self.mean[...].dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        if self.use_running_average:
            mean, var = self.mean[...].astype(stat_dtype), self.var[...].astype(stat_dtype)
            return ((xs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(x.dtype)
        y, mean, var = batch_norm_train(xs, scale, bias, self.epsilon)  # noqa: F821 - from jaxnets.layers
        n = x.size // c
        count = self.num_batches_tracked[...]
        m = 1.0 / (count + 1).astype(stat_dtype) if self.momentum is None else self.momentum
        self.mean[...] = ((1 - m) * self.mean[...] + m * mean).astype(self.mean[...].dtype)
        # torch's running variance takes the unbiased n / (n - 1) estimate (Flax's the biased one)
        unbiased = var * (n / max(n - 1, 1))
        self.var[...] = ((1 - m) * self.var[...] + m * unbiased).astype(self.var[...].dtype)
        self.num_batches_tracked[...] = count + 1
        return y.astype(x.dtype)


class MultiheadAttention(nnx.Module):
    """torch's nn.MultiheadAttention (packed input projection, as torch stores it: ``in_proj_weight``
    (3E, E), ``in_proj_bias``; ``out_proj`` a Linear), returning (output, weights averaged over heads)
    as torch does with need_weights."""

    def __init__(self, embed_dim: int, num_heads: int, *, batch_first: bool = False, bias: bool = True,
                 rngs: nnx.Rngs):
        e = embed_dim
        self.embed_dim, self.num_heads, self.batch_first, self.bias = embed_dim, num_heads, batch_first, bias
        self.in_proj_weight = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (3 * e, e)))
        if bias:
            self.in_proj_bias = nnx.Param(jnp.zeros((3 * e,)))
        self.out_proj = nnx.Linear(e, e, use_bias=bias, rngs=rngs)

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, need_weights: bool = True,
                 average_attn_weights: bool = True) -> tuple[jax.Array, jax.Array | None]:
        e = self.embed_dim
        b = self.in_proj_bias[...] if self.bias else jnp.zeros(3 * e)
        return packed_attention(query, key, value, self.in_proj_weight[...], b,  # noqa: F821 - from parity.port.runtime
                                self.num_heads, self.batch_first, self.out_proj, need_weights, average_attn_weights)


class StochasticDepth(nnx.Module):
    """torchvision's stochastic depth: after ``model.train()``, zero each sample ("row") or the whole
    batch with probability p and scale the rest by 1 / (1 - p), drawing from the "dropout" stream."""

    def __init__(self, p: float, mode: str = "row", *, deterministic: bool = False, rngs: nnx.Rngs):
        self.p, self.mode, self.deterministic = p, mode, deterministic
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        mask = jax.random.bernoulli(self.rngs(), keep, shape)
        return jnp.where(mask, x / keep, 0)
