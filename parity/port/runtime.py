"""The helper layers a port's ``model.py`` may need, with torch's semantics where Flax has no layer or
a different default (docs/port.md, "The op table"). A port copies the source of the ones it uses
into its file (with those of ``jaxnets.layers``: BatchNorm, the max pool, the adaptive average pool),
so this module imports only jax, flax, numpy and the standard library. Every image helper is NHWC.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def pool_padding(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> tuple[int, int]:
    """torch's pooling pads (p, p); in ceil mode the last window may start inside the input or its left
    padding and run past the right one: (p, p + extra) then."""
    span = d * (k - 1) + 1
    out = (size + 2 * p - span + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return p, max(p, (out - 1) * s + span - size - p)


def max_pool2d(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               ceil_mode: bool = False) -> jax.Array:
    """torch's MaxPool2d (NHWC; -inf padding, ceil mode, gradient to each window's first maximum)."""
    pads = tuple(pool_padding(n, k, s, p, 1, ceil_mode)
                 for n, k, s, p in zip(x.shape[1:3], kernel, stride, padding, strict=True))
    return max_pool(x, kernel, stride, pads)  # noqa: F821 - emitted beside it from jaxnets.layers


def avg_pool2d(x: jax.Array, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> jax.Array:
    """torch's AvgPool2d (NHWC): zero padding; the divisor counts the padded positions inside each
    window (count_include_pad) or only the input's, and never the part past the right padding."""
    pads = [pool_padding(n, k, s, p, 1, ceil_mode) for n, k, s, p in zip(x.shape[1:3], kernel, stride, padding,
                                                                          strict=True)]
    dims, strides = (1, *kernel, 1), (1, *stride, 1)
    window = [(0, 0), *pads, (0, 0)]
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, window)
    if divisor_override:
        return total / divisor_override
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:  # the torch-padded frame counts, the ceil-mode extra does not
        ones = jnp.pad(ones, [(0, 0), *[(p, p) for p in padding], (0, 0)], constant_values=1)
        window = [(0, 0), *[(0, hi - lo) for lo, hi in pads], (0, 0)]
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, window)
    return total / count


def adaptive_max_pool2d(x: jax.Array, out: Sequence[int | None]) -> jax.Array:
    """torch's AdaptiveMaxPool2d (NHWC): bin i takes [floor(i*H/out), ceil((i+1)*H/out)); the gradient
    goes to the bin's first maximum (argmax), as torch's does."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = out[0] or h, out[1] or w
    rows = []
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        cols = []
        for j in range(ow):
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            b = x[:, r0:r1, c0:c1, :].reshape(x.shape[0], -1, x.shape[3])
            cols.append(jnp.take_along_axis(b, jnp.argmax(b, axis=1)[:, None], axis=1)[:, 0])
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def interpolate(x: jax.Array, size: tuple[int, int], mode: str = "nearest", align_corners: bool = False
                ) -> jax.Array:
    """torch's interpolate (NHWC) to ``size``: "nearest" takes floor(i * in / out); "bilinear" with
    torch's source coordinates, (i + 0.5) in/out - 0.5 clamped at 0, or i (in - 1)/(out - 1) with
    align_corners."""
    out = x
    for axis, (n_in, n_out) in zip((1, 2), zip(x.shape[1:3], size, strict=True), strict=True):
        if mode == "nearest":
            idx = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
            out = jnp.take(out, jnp.asarray(idx), axis=axis)
            continue
        if align_corners:
            src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
        else:
            src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        shape = [1] * out.ndim
        shape[axis] = n_out
        frac = jnp.asarray((src - lo).reshape(shape), out.dtype)
        out = jnp.take(out, jnp.asarray(lo), axis=axis) * (1 - frac) + jnp.take(out, jnp.asarray(hi), axis=axis) * frac
    return out


@jax.custom_jvp
def hard_sigmoid(x: jax.Array) -> jax.Array:
    """torch's Hardsigmoid: relu6(x + 3) / 6."""
    return jnp.minimum(jnp.maximum(x + 3, 0), 6) / 6


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals: tuple, tangents: tuple) -> tuple:
    # torch's backward multiplies by 1/6 rounded to float32, in float64 too (hardsigmoid_backward)
    (x,), (t,) = primals, tangents
    slope = jnp.where((x > -3) & (x < 3), jnp.asarray(np.float32(1 / 6), x.dtype), jnp.zeros((), x.dtype))
    return hard_sigmoid(x), t * slope


def mish(x: jax.Array) -> jax.Array:
    """torch's Mish: x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


def layer_norm(x: jax.Array, scale: jax.Array | None, bias: jax.Array | None, epsilon: float) -> jax.Array:
    """torch's F.layer_norm over the trailing ``scale.ndim`` axes (every axis of ``scale``'s shape)."""
    axes = tuple(range(x.ndim - (scale.ndim if scale is not None else 1), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + epsilon)
    return y * (scale if scale is not None else 1) + (bias if bias is not None else 0)


def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, stride: Sequence[int],
         padding: Sequence[tuple[int, int]], dilation: Sequence[int], groups: int, kernel_layout: str) -> jax.Array:
    """torch's F.conv1d/2d/3d on a channels-last input; the kernel as the weight map stores it
    ("OI..." torch's, or "...IO" Flax's)."""
    sp = "HWD"[: x.ndim - 2]
    rhs = f"OI{sp}" if kernel_layout == "torch" else f"{sp}IO"
    y = jax.lax.conv_general_dilated(x, kernel, tuple(stride), tuple(padding), rhs_dilation=tuple(dilation),
                                     dimension_numbers=(f"N{sp}C", rhs, f"N{sp}C"), feature_group_count=groups)
    return y if bias is None else y + bias


def scaled_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
                                 is_causal: bool = False, scale: float | None = None) -> jax.Array:
    """torch's F.scaled_dot_product_attention on (..., L, E): a boolean ``mask`` keeps True, a float
    one is added; no dropout (the check sets its rate to 0)."""
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        keep = jnp.tril(jnp.ones((q.shape[-2], k.shape[-2]), bool))
        s = jnp.where(keep, s, -jnp.inf)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf) if mask.dtype == jnp.bool_ else s + mask
    return jnp.matmul(jax.nn.softmax(s, axis=-1), v)


def packed_attention(query: jax.Array, key: jax.Array, value: jax.Array, w: jax.Array, b: jax.Array,
                     num_heads: int, batch_first: bool, out_proj: Callable[[jax.Array], jax.Array],
                     need_weights: bool, average_attn_weights: bool) -> tuple[jax.Array, jax.Array | None]:
    """torch's multi-head attention with the packed input projection ``w`` (3E, E), ``b`` (3E,) as torch
    stores them: (output, the weights, averaged over heads or not, when ``need_weights``)."""
    e, h = w.shape[1], num_heads
    if not batch_first:  # torch's (L, N, E)
        query, key, value = (jnp.swapaxes(t, 0, 1) for t in (query, key, value))
    q, k, v = (t @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e] for i, t in enumerate((query, key, value)))

    def heads(t: jax.Array) -> jax.Array:  # (N, L, E) -> (N, heads, L, E / heads)
        return jnp.swapaxes(t.reshape(*t.shape[:2], h, e // h), 1, 2)

    s = jnp.matmul(heads(q), jnp.swapaxes(heads(k), -1, -2)) / math.sqrt(e // h)
    p = jax.nn.softmax(s, axis=-1)
    out = out_proj(jnp.swapaxes(jnp.matmul(p, heads(v)), 1, 2).reshape(q.shape))
    if not batch_first:
        out = jnp.swapaxes(out, 0, 1)
    weights = (p.mean(axis=1) if average_attn_weights else p) if need_weights else None
    return out, weights


class MultiheadAttention(nn.Module):
    """torch's nn.MultiheadAttention (packed input projection, as torch stores it: ``in_proj_weight``
    (3E, E), ``in_proj_bias``; ``out_proj`` a Dense), returning (output, weights averaged over heads)
    as torch does with need_weights."""

    embed_dim: int
    num_heads: int
    batch_first: bool = False
    bias: bool = True

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, need_weights: bool = True,
                 average_attn_weights: bool = True) -> tuple[jax.Array, jax.Array | None]:
        e = self.embed_dim
        w = self.param("in_proj_weight", nn.initializers.lecun_normal(), (3 * e, e))
        b = self.param("in_proj_bias", nn.initializers.zeros_init(), (3 * e,)) if self.bias else jnp.zeros(3 * e)
        return packed_attention(query, key, value, w, b, self.num_heads, self.batch_first,
                                nn.Dense(e, use_bias=self.bias, name="out_proj"), need_weights, average_attn_weights)


def stochastic_depth(module: nn.Module, x: jax.Array, p: float, mode: str, train: bool) -> jax.Array:
    """torchvision's stochastic depth: in train mode, zero each sample ("row") or the whole batch with
    probability p and scale the rest by 1 / (1 - p); needs the "dropout" rng when p > 0."""
    if not train or p == 0.0:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if mode == "row" else (1,) * x.ndim
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, 0)


def embed_padding(ids: jax.Array, y: jax.Array, padding_idx: int) -> jax.Array:
    """torch's Embedding(padding_idx=...): that row gets no gradient."""
    return jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(y), y)


def fast_conv(*args, **kwargs) -> jax.Array:
    """nn.Conv's convolution as jaxnets' twins compute it: one dot over the kernel taps where XLA:CPU
    would swap the operands into its slow reversed-window loop, and for strided 1x1 convolutions; lax's
    own convolution everywhere else. The same sum of products (docs/benchmark.md)."""
    return conv_general_dilated("auto")(*args, **kwargs)  # noqa: F821 - emitted beside it from jaxnets.layers


def global_mean(x: jax.Array, train: bool = False) -> jax.Array:
    """torch's AdaptiveAvgPool2d(1) (NHWC, keeping the 1x1): the mean over H and W, after an exact
    identity in eval mode that keeps XLA:CPU's YNNPACK reduce fusion from taking the convolutions
    before it (jaxnets.layers.global_avg_pool, docs/benchmark.md)."""
    return (x if train else ynnpack_fence(x)).mean(axis=(1, 2), keepdims=True)  # noqa: F821 - from jaxnets.layers
