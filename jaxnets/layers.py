"""The Flax side of every framework difference; the torch side is torchnets/layers.py."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import netspecs

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


CONV_IMPLS = ("auto", "xla")  # "auto": taps where XLA:CPU is slow (swap, strided 1x1); "xla": always lax's conv


def xla_would_swap(kernel: tuple[int, ...], in_size: tuple[int, ...], out_size: tuple[int, ...]) -> bool:
    """XLA's algebraic simplifier swaps a conv's operands when the kernel window has more elements
    than the input's spatial area; the backward-data conv's input is the output, so both count."""
    window = math.prod(kernel)
    return window > 1 and window > min(math.prod(in_size), math.prod(out_size))


def strided_pointwise(kernel: tuple[int, ...], strides: Sequence[int]) -> bool:
    """A 1x1 conv with stride > 1 (ResNet's downsample): XLA differentiates it into convolutions over
    the zero-dilated gradient (4x the work at stride 2); as a strided slice and a dot, a dot and a pad."""
    return math.prod(kernel) == 1 and any(s > 1 for s in strides)


def _out_sizes(spatial: Sequence[int], padding: Sequence[tuple[int, int]], kernel: Sequence[int],
               strides: Sequence[int]) -> list[int]:
    """A convolution's output size per spatial dimension (explicit padding, no dilation)."""
    return [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in zip(spatial, padding, kernel, strides,
                                                                          strict=True)]


def conv_taps(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
              feature_group_count: int = 1, precision: Any = None) -> jax.Array:
    """lax.conv_general_dilated for NHWC x HWIO with explicit padding, as one dot_general over the
    kernel taps that touch the input (taps reading only padding add zeros and are left out).

    The same sum of products as the convolution; its gradient is slices, pads and dots, so XLA
    has no small-map convolution to swap (docs/benchmark.md, "The swapped convolution")."""
    n, *spatial, cin = lhs.shape
    *kernel, cin_g, cout = rhs.shape
    out = _out_sizes(spatial, padding, kernel, window_strides)
    # per dimension, the span of kernel taps that read any input (a tap in between adds zeros)
    live = [[i for i in range(k) if any(0 <= o * s + i - lo < size for o in range(osize))]
            for k, s, (lo, _), size, osize in zip(kernel, window_strides, padding, spatial, out, strict=True)]
    live = [list(range(t[0], t[-1] + 1)) for t in live]
    xp = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    cols = []
    for idx in np.ndindex(*[len(t) for t in live]):
        tap = tuple(t[i] for t, i in zip(live, idx, strict=True))
        start = (0, *tap, 0)
        stop = (n, *[t + (o - 1) * s + 1 for t, o, s in zip(tap, out, window_strides, strict=True)], cin)
        cols.append(jax.lax.slice(xp, start, stop, (1, *window_strides, 1)))
    g, nt, nsp = feature_group_count, len(cols), len(spatial)
    patches = jnp.stack(cols, axis=-2).reshape(n, *out, nt, g, cin_g)
    # the live taps are a box of the kernel, in the patches' order; all live: a reshape, no copy
    box = tuple(slice(t[0], t[-1] + 1) for t in live)
    weights = rhs[box].reshape(nt, cin_g, g, cout // g)
    # contract taps and per-group input channels; the group is a batch dimension of the dot
    t_ax, g_ax, c_ax = nsp + 1, nsp + 2, nsp + 3
    y = jax.lax.dot_general(patches, weights, (((t_ax, c_ax), (0, 1)), ((g_ax,), (2,))), precision=precision)
    # dot_general puts the batch (group) axis first: (g, n, *out, cout/g) -> (n, *out, g, cout/g)
    return jnp.moveaxis(y, 0, -2).reshape(n, *out, cout)


def _ones(dilation: Any) -> bool:
    return dilation is None or all(d == 1 for d in dilation)


def _channels_last(ndim: int, dimension_numbers: Any) -> bool:
    """NHWC input, HWIO kernel (nn.Conv's layout), for any number of spatial dimensions."""
    sp = "HWDUVXYZ"[: ndim - 2]
    want = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, (f"N{sp}C", f"{sp}IO", f"N{sp}C"))
    return dimension_numbers == want


def conv_general_dilated(conv_impl: str):
    """The convolution nn.Conv calls: on CPU, conv_taps where XLA:CPU would swap operands into its
    slow reversed-window loop (10-100x slower than this dot) and for strided 1x1 convs (2x faster
    gradients); lax's own conv everywhere else and on every other backend, where these are XLA:CPU's
    problems only (chosen when the program is lowered: ``jax.lax.platform_dependent``)."""

    def call(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None, **kw):
        def lax_conv(lhs, rhs):
            return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                                dimension_numbers, feature_group_count, precision=precision, **kw)

        if conv_impl == "auto" and not kw and _channels_last(lhs.ndim, dimension_numbers) \
                and not isinstance(padding, str) and _ones(lhs_dilation) and _ones(rhs_dilation):
            out = _out_sizes(lhs.shape[1:-1], padding, rhs.shape[:-2], window_strides)
            if xla_would_swap(rhs.shape[:-2], lhs.shape[1:-1], out) or strided_pointwise(rhs.shape[:-2],
                                                                                          window_strides):
                def taps(lhs, rhs):
                    return conv_taps(lhs, rhs, window_strides, padding, feature_group_count=feature_group_count,
                                     precision=precision)
                return jax.lax.platform_dependent(lhs, rhs, cpu=taps, default=lax_conv)
        return lax_conv(lhs, rhs)

    return call


_CONV = {impl: conv_general_dilated(impl) for impl in CONV_IMPLS}


def conv(cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False, *,
         name: str, dtype: Dtype = None, param_dtype: Dtype = jnp.float32, conv_impl: str = "auto") -> nn.Conv:
    """A k x k conv padded k // 2 on every side: 'SAME' would pad stride-2 convs (0, 1) unlike torch."""
    p = k // 2
    return nn.Conv(cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=bias, kernel_init=kaiming_fan_out,
                   bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   conv_general_dilated=_CONV[conv_impl], name=name)


class BatchNorm(nn.Module):
    """BatchNorm with torch's semantics over the last axis; Flax's differs in momentum convention,
    variance formula (E[x^2]-E[x]^2) and the running variance (biased), and has no batch counter.
    ``momentum=None`` is torch's cumulative average; ``affine`` and ``track_running_stats`` as torch's."""

    momentum: float | None = BN_MOMENTUM
    epsilon: float = BN_EPS
    scale_init: Any = nn.initializers.ones
    affine: bool = True
    track_running_stats: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @staticmethod
    def running_var(batch_var: jax.Array, n: int) -> jax.Array:
        """What enters the running variance: torch's unbiased n/(n-1) estimate (Flax: biased)."""
        return batch_var * (n / max(n - 1, 1))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        if self.affine:
            scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        else:
            scale, bias = jnp.ones((c,), self.param_dtype), jnp.zeros((c,), self.param_dtype)
        if not self.track_running_stats:  # torch then normalises with the batch in both modes
            xs = x.astype(jnp.promote_types(scale.dtype, jnp.float32))
            return batch_norm_train(xs, scale, bias, self.epsilon)[0].astype(self.dtype or x.dtype)
        mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        # Statistics in at least float32 (as torch autocast does for batch_norm), in the statistics' dtype.
        stat_dtype = jnp.promote_types(mean_v.value.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        if train:
            y, mean, var = batch_norm_train(xs, scale, bias, self.epsilon)
            if not self.is_initializing():
                n = x.size // c
                # torch's momentum weighs the new batch; None: the cumulative average over the batches
                m = 1.0 / (count.value + 1).astype(stat_dtype) if self.momentum is None else self.momentum
                mean_v.value = ((1 - m) * mean_v.value + m * mean).astype(mean_v.value.dtype)
                var_v.value = ((1 - m) * var_v.value + m * self.running_var(var, n)).astype(var_v.value.dtype)
                count.value = count.value + 1
        else:
            mean, var = mean_v.value.astype(stat_dtype), var_v.value.astype(stat_dtype)
            y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype or x.dtype)


def _batch_moments(x: jax.Array, epsilon: float) -> tuple[jax.Array, ...]:
    """Over every axis but the last: mean, x - mean, the biased variance (two-pass, as torch) and
    rsqrt(variance + epsilon)."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    d = x - mean
    var = jnp.square(d).mean(axis=axes)
    return mean, d, var, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode BatchNorm over every axis but the last: (y, batch mean, biased batch variance)."""
    mean, d, var, inv = _batch_moments(x, epsilon)
    return d * inv * scale + bias, mean, var


@batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon: float, primals: tuple, tangents: tuple) -> tuple[tuple, tuple]:
    """The textbook derivative, as torch's batch_norm_backward: its transpose needs two independent
    per-channel sums (of the gradient and of gradient x x-hat), where autodiff through the mean and
    the variance makes one sum wait on another (docs/benchmark.md, "The fourth"). Same math; a rule
    for the JVP, not the VJP, so forward mode and higher orders still work."""
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    axes = tuple(range(x.ndim - 1))
    mean, d, var, inv = _batch_moments(x, epsilon)
    xhat = d * inv
    dmean = dx.mean(axis=axes)
    dxhat = inv * (dx - dmean - xhat * (dx * xhat).mean(axis=axes))
    dvar = 2 * (d * dx).mean(axis=axes)
    return (xhat * scale + bias, mean, var), (dxhat * scale + xhat * dscale + dbias, dmean, dvar)


def local_response_norm(x: jax.Array, size: int = LRN["size"], alpha: float = LRN["alpha"],
                        beta: float = LRN["beta"], k: float = LRN["k"]) -> jax.Array:
    """torch.nn.LocalResponseNorm across channels (the last axis): x / (k + alpha/size * window sum
    x^2)^beta, the window zero-padded size//2 before and (size-1)//2 after (Flax has no LRN)."""
    pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    sq = jnp.pad(jnp.square(x), pad)
    # a Python 0.0 init lets JAX use its differentiable window-sum (an array init is not, under jit)
    window = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (size,), (1,) * x.ndim, "VALID")
    return x / (k + alpha / size * window) ** beta


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pads(pad: int | Sequence) -> tuple[tuple[int, int], tuple[int, int]]:
    """An int, (ph, pw) or ((top, bottom), (left, right)) as ((top, bottom), (left, right))."""
    if isinstance(pad, int):
        return (pad, pad), (pad, pad)
    return tuple((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])) for p in pad)


def _pool_windows(x: jax.Array, k: tuple[int, int], stride: tuple[int, int],
                  pad: tuple[tuple[int, int], tuple[int, int]]) -> list[jax.Array]:
    """The kh*kw strided views of x padded with -inf, row-major over the window (torch's scan order)."""
    xp = jnp.pad(x, ((0, 0), *pad, (0, 0)), constant_values=-jnp.inf)
    n, h, w, c = xp.shape
    ho, wo = (h - k[0]) // stride[0] + 1, (w - k[1]) // stride[1] + 1
    return [jax.lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride[0] + 1, j + (wo - 1) * stride[1] + 1, c),
                          (1, *stride, 1)) for i in range(k[0]) for j in range(k[1])]


def max_pool(x: jax.Array, k: int | Sequence[int], stride: int | Sequence[int], pad: int | Sequence) -> jax.Array:
    """torch's MaxPool2d (NHWC, -inf padding; ``pad`` may be asymmetric, as ceil mode needs) as a max
    over strided views. Its gradient goes to the first maximum of each window in row-major order, as
    torch's does; it is written out because XLA:CPU runs reduce_window's gradient 25x slower than the
    forward (docs/benchmark.md)."""
    return _max_pool(x, _pair(k), _pair(stride), _pads(pad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, k: tuple[int, int], stride: tuple[int, int],
              pad: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    return functools.reduce(jnp.maximum, _pool_windows(x, k, stride, pad))


def _max_pool_fwd(x: jax.Array, k: tuple[int, int], stride: tuple[int, int],
                  pad: tuple[tuple[int, int], tuple[int, int]]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _max_pool(x, k, stride, pad)
    return y, (x, y)


def _max_pool_bwd(k: tuple[int, int], stride: tuple[int, int], pad: tuple[tuple[int, int], tuple[int, int]],
                  res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = res
    windows = _pool_windows(x, k, stride, pad)
    (top, bottom), (left, right) = pad
    h, w = x.shape[1] + top + bottom, x.shape[2] + left + right
    ho, wo = y.shape[1], y.shape[2]
    taken = jnp.zeros(y.shape, bool)
    dxp = jnp.zeros((x.shape[0], h, w, x.shape[3]), g.dtype)
    for idx, win in enumerate(windows):
        i, j = divmod(idx, k[1])
        hit = (win == y) & ~taken
        taken = taken | hit
        # the transpose of a strided slice: interior padding stride-1, then to the padded frame
        dxp = dxp + jax.lax.pad(jnp.where(hit, g, 0).astype(g.dtype), jnp.zeros((), g.dtype),
                                ((0, 0, 0), (i, h - i - (ho - 1) * stride[0] - 1, stride[0] - 1),
                                 (j, w - j - (wo - 1) * stride[1] - 1, stride[1] - 1), (0, 0, 0)))
    return (dxp[:, top:h - bottom, left:w - right, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3(x: jax.Array) -> jax.Array:
    """The ResNet stem pool, 3x3/2 padded 1 with -inf as torch does (not 'SAME')."""
    return max_pool(x, 3, 2, 1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """VGG's pool: floor mode, as torch's default."""
    return max_pool(x, 2, 2, 0)


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, out: int | Sequence[int | None]) -> jax.Array:
    """torch's AdaptiveAvgPool2d (NHWC): bin i averages [floor(i*H/out), ceil((i+1)*H/out)); ``out`` an
    int or (oh, ow), None keeping that size. Flax has none."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = (out, out) if isinstance(out, int) else (out[0] or h, out[1] or w)
    if h == oh and w == ow:
        return x
    mh = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
    mw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
    return jnp.einsum("nhwc,ih,jw->nijc", x, mh, mw, precision=jax.lax.Precision.HIGHEST)


def ynnpack_fence(x: jax.Array) -> jax.Array:
    """x, bit for bit: reduce_precision at the dtype's own widths, which YNNPACK fusions cannot take
    (an optimization_barrier would be gone before XLA:CPU's library-fusion pass)."""
    info = jnp.finfo(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def global_avg_pool(x: jax.Array, conv_impl: str = "auto", train: bool = False) -> jax.Array:
    """torch's AdaptiveAvgPool2d((1, 1)) + flatten: the mean over H and W.

    In eval mode "auto" puts ynnpack_fence before the mean. Without it XLA:CPU's YNNPACK reduce
    fusion grows from the mean up through the elementwise BatchNorm/ReLU chain and takes the last
    stage's convolutions into YNNPACK: resnet18 inference at 224x224 1.08x slower (docs/results.md).
    In train mode the batch statistics already stop it."""
    if conv_impl == "auto" and not train:
        x = ynnpack_fence(x)
    return x.mean(axis=(1, 2))


def shortcut_a(x: jax.Array, cout: int, stride: int) -> jax.Array:
    """Option A (paper 3.3): subsample by the stride, append zero channels; no parameters."""
    x = x[:, ::stride, ::stride, :]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, cout - x.shape[-1])))


def check_input(module: nn.Module, spec: netspecs.Spec, x: Any) -> None:
    """ValueError naming expected vs got (see netspecs.check_input); runs at trace time."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise ValueError(f"{spec.name}: expected a jax or numpy array, got {type(x).__name__}")
    leaves = jax.tree_util.tree_leaves(module.variables.get("params", {}))
    param_dtype = leaves[0].dtype if leaves else jnp.dtype(module.param_dtype)
    compute = jnp.dtype(module.dtype).name if module.dtype is not None else None
    netspecs.check_input(spec, tuple(x.shape), jnp.dtype(x.dtype).name, jnp.dtype(param_dtype).name,
                      "NHWC", compute)
