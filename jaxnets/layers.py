"""The Flax side of every framework difference; the torch side is torchnets/layers.py."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from parity import specs

Dtype = Any
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention; Flax's own BatchNorm would need 0.9 and default to 0.99
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)  # VGG paper, torch.nn.LocalResponseNorm formula

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu") draws untruncated (flax's
# kaiming_normal is truncated at 2 sigma); fan_out = O * kh * kw in both, groups ignored.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int):
    """torch.nn.Linear's default: weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False, *,
         name: str, dtype: Dtype = None, param_dtype: Dtype = jnp.float32) -> nn.Conv:
    """A k x k conv padded k // 2 on every side: 'SAME' would pad stride-2 convs (0, 1) unlike torch."""
    p = k // 2
    return nn.Conv(cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=bias, kernel_init=kaiming_fan_out,
                   bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype, name=name)


class BatchNorm(nn.Module):
    """BatchNorm2d with torch's semantics; Flax's differs in momentum convention, variance
    formula (E[x^2]-E[x]^2) and the running variance (biased), and has no batch counter."""

    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPS
    scale_init: Any = nn.initializers.ones
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @staticmethod
    def running_var(batch_var: jax.Array, n: int) -> jax.Array:
        """What enters the running variance: torch's unbiased n/(n-1) estimate (Flax: biased)."""
        return batch_var * (n / max(n - 1, 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        # Statistics in at least float32, as torch autocast does for batch_norm.
        stat_dtype = jnp.promote_types(mean_v.value.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        if train:
            mean = xs.mean(axis=(0, 1, 2))
            var = jnp.square(xs - mean).mean(axis=(0, 1, 2))  # two-pass, as torch
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                mean_v.value = ((1 - m) * mean_v.value + m * mean).astype(mean_v.value.dtype)
                var_v.value = ((1 - m) * var_v.value + m * self.running_var(var, n)).astype(var_v.value.dtype)
                count.value = count.value + 1
        else:
            mean, var = mean_v.value.astype(stat_dtype), var_v.value.astype(stat_dtype)
        y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype or x.dtype)


def local_response_norm(x: jax.Array) -> jax.Array:
    """torch.nn.LocalResponseNorm across channels: x / (k + alpha/size * window sum x^2)^beta,
    the window zero-padded size//2 before and (size-1)//2 after (Flax has no LRN)."""
    size = LRN["size"]
    sq = jnp.pad(jnp.square(x), ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
    # a Python 0.0 init lets JAX use its differentiable window-sum (an array init is not, under jit)
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
    return x / (LRN["k"] + LRN["alpha"] / size * window) ** LRN["beta"]


def max_pool_3x3(x: jax.Array) -> jax.Array:
    """The ResNet stem pool, 3x3/2 padded 1 with -inf as torch does (not 'SAME')."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """VGG's pool: floor mode, as torch's default."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
    """torch's AdaptiveAvgPool2d: bin i averages [floor(i*H/out), ceil((i+1)*H/out)); Flax has none."""
    h, w = x.shape[1], x.shape[2]
    if h == out and w == out:
        return x
    mh = jnp.asarray(_adaptive_matrix(h, out), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, out), x.dtype)
    return jnp.einsum("nhwc,ih,jw->nijc", x, mh, mw, precision=jax.lax.Precision.HIGHEST)


def shortcut_a(x: jax.Array, cout: int, stride: int) -> jax.Array:
    """Option A (paper 3.3): subsample by the stride, append zero channels; no parameters."""
    x = x[:, ::stride, ::stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cout - x.shape[-1])))


def check_input(module: nn.Module, spec: specs.Spec, x: Any) -> None:
    """ValueError naming expected vs got (see parity.specs.check_input); runs at trace time."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{spec.name}: expected a jax or numpy array, got {type(x).__name__}")
    leaves = jax.tree_util.tree_leaves(module.variables.get("params", {}))
    param_dtype = leaves[0].dtype if leaves else jnp.dtype(module.param_dtype)
    compute = jnp.dtype(module.dtype).name if module.dtype is not None else None
    specs.check_input(spec, tuple(x.shape), jnp.dtype(x.dtype).name, jnp.dtype(param_dtype).name,
                      "NHWC", compute)
