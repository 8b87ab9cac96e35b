"""The op table: every torch layer, function and tensor method the port writes, each as the Flax code
a careful port would hold, with torch's conventions made explicit and its dimensions moved to where
the value lives in Flax (docs/port.md, "The op table"). Anything else is refused.

A layer handler is ``fn(em, node, module, name, *args, **kwargs) -> V``; a function or method handler
``fn(em, node, *args, **kwargs) -> V`` (arguments as ``parity.port.values.V``, constants as ``const``).
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from parity.port.emit import Emitter, OpTable, UnsupportedError
from parity.port.values import V, canonical, channels_last, const, identity, inverse, renumber, reshape_groups

if TYPE_CHECKING:
    import torch
    import torch.fx as fx

LayerHandler = Callable[..., V]


def _py(v: Any) -> Any:
    """The Python value of a constant argument (or of a list of them)."""
    if isinstance(v, V):
        if v.known:
            return v.py
        if v.items is not None:
            return tuple(_py(x) for x in v.items)
        raise UnsupportedError(f"{v.expr}: a value known only at run time where a constant is needed")
    if isinstance(v, list):
        return [_py(x) for x in v]
    return v


def _pair(v: Any, n: int = 2) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


def _same(em: Emitter, node: fx.Node, v: V, expr: str) -> V:
    """An elementwise result: ``v``'s layout."""
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=v.perm, integer=v.integer)


# --------------------------------------------------------------------------- layers


def conv(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    n = len(m.kernel_size)
    if m.padding_mode != "zeros":
        mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[m.padding_mode]
        pads = [(p, p) for p in _pair(m.padding, n)] if not isinstance(m.padding, str) else None
        if pads is None:
            raise UnsupportedError(f"{name}: padding {m.padding!r} with padding_mode {m.padding_mode!r}")
        xs = em.assign(f"{node.name}_pad", f"jnp.pad({em.channels_last(x)}, {[(0, 0), *pads, (0, 0)]}, "
                       f"mode={mode!r})", shape=x.shape, perm=channels_last(x.ndim))
        x, padding = xs, [(0, 0)] * n
    elif isinstance(m.padding, str):  # torch's 'same' pads the odd pixel at the end, 'valid' nothing
        padding = [(0, 0)] * n if m.padding == "valid" else \
            [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(m.kernel_size, m.dilation, strict=True)]
    else:
        padding = [(p, p) for p in _pair(m.padding, n)]
    features = em.slot(name, 'features', m.out_channels)
    rest = (f"{tuple(m.kernel_size)}, strides={em.slot(name, 'strides', tuple(m.stride))}, "
            f"padding={em.slot(name, 'padding', tuple(padding))}, "
            + (f"kernel_dilation={tuple(m.dilation)}, " if any(d != 1 for d in m.dilation) else "")
            + (f"feature_group_count={em.slot(name, 'groups', m.groups)}, " if m.groups != 1 else "")
            + f"use_bias={m.bias is not None}, conv_general_dilated={em.helper('fast_conv')}")
    call = em.layer(node.target, "nn.Conv", f"{features}, {rest}", "nnx.Conv",
                    f"{em.slot(name, 'in_features', m.in_channels)}, {features}, {rest}")
    return em.assign(node.name, f"{call}({em.channels_last(x)})",
                     shape=tuple(em.meta(node).shape), perm=channels_last(x.ndim))


def conv_transpose(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    if m.groups != 1:
        raise UnsupportedError(f"{name}: ConvTranspose with groups={m.groups} (Flax's ConvTranspose has no groups)")
    # torch's transposed conv = a conv over the stride-dilated input padded d(k-1)-p, kernel flipped
    # (the weight rules flip it): Flax's ConvTranspose with transpose_kernel=False
    pad = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for k, d, p, op in
                zip(m.kernel_size, m.dilation, m.padding, m.output_padding, strict=True))
    features = em.slot(name, 'features', m.out_channels)
    rest = (f"{tuple(m.kernel_size)}, strides={em.slot(name, 'strides', tuple(m.stride))}, "
            f"padding={em.slot(name, 'padding', pad)}, "
            + (f"kernel_dilation={tuple(m.dilation)}, " if any(d != 1 for d in m.dilation) else "")
            + f"use_bias={m.bias is not None}, transpose_kernel=False")
    call = em.layer(node.target, "nn.ConvTranspose", f"{features}, {rest}", "nnx.ConvTranspose",
                    f"{em.slot(name, 'in_features', m.in_channels)}, {features}, {rest}")
    return em.assign(node.name, f"{call}({em.channels_last(x)})",
                     shape=tuple(em.meta(node).shape), perm=channels_last(x.ndim))


def _last_dim_first(em: Emitter, v: V, why: str) -> tuple[str, tuple[int, ...]]:
    """``v`` with torch's last dimension on Flax's last axis (what Dense and LayerNorm act on)."""
    if v.perm[-1] == v.ndim - 1:
        return v.expr, v.perm
    return em.torch_order(v, why), identity(v.ndim)


def linear(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    expr, perm = _last_dim_first(em, x, "a Linear acts on torch's last dimension: back to torch's order")
    features, bias = em.slot(name, 'features', m.out_features), f"use_bias={m.bias is not None}"
    call = em.layer(node.target, "nn.Dense", f"{features}, {bias}", "nnx.Linear",
                    f"{em.slot(name, 'in_features', m.in_features)}, {features}, {bias}")
    return em.assign(node.name, f"{call}({expr})", shape=tuple(em.meta(node).shape), perm=perm)


def batch_norm(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    em.helper("BatchNorm")
    args = [f"momentum={em.slot(name, 'momentum', m.momentum)}", f"epsilon={em.slot(name, 'epsilon', m.eps)}"]
    if not m.affine:
        args.append("affine=False")
    if not m.track_running_stats:
        args.append("track_running_stats=False")
    call = em.layer(node.target, "BatchNorm", ", ".join(args), "BatchNorm",
                    ", ".join([em.slot(name, "num_features", m.num_features), *args]))
    # Linen takes the mode as an argument; NNX's BatchNorm follows model.train() / model.eval()
    expr = f"{call}({em.channels_last(x)}, train)" if em.linen else f"{call}({em.channels_last(x)})"
    return em.assign(node.name, expr,
                     shape=tuple(em.meta(node).shape), perm=channels_last(x.ndim))


def layer_norm(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    k = len(m.normalized_shape)
    tail = tuple(range(x.ndim - k, x.ndim))
    expr, perm = (x.expr, x.perm) if tuple(x.perm[-k:]) == tail else \
        (em.torch_order(x, "a LayerNorm normalises torch's last dimensions: back to torch's order"), identity(x.ndim))
    axes = "" if k == 1 else f"reduction_axes={tuple(range(-k, 0))}, feature_axes={tuple(range(-k, 0))}, "
    affine = m.elementwise_affine
    bias = affine and getattr(m, "bias", None) is not None
    if k > 1 and not em.linen:
        raise UnsupportedError(f"{name}: LayerNorm over {k} dimensions (nnx.LayerNorm's scale has one feature axis; "
                               "port with api='linen')")
    rest = f"epsilon={em.slot(name, 'epsilon', m.eps)}, {axes}use_scale={affine}, use_bias={bias}"
    call = em.layer(node.target, "nn.LayerNorm", rest, "nnx.LayerNorm",
                    f"{em.slot(name, 'num_features', m.normalized_shape[0])}, {rest}")
    return em.assign(node.name, f"{call}({expr})", shape=tuple(em.meta(node).shape), perm=perm)


def group_norm(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    rest = (f"num_groups={em.slot(name, 'num_groups', m.num_groups)}, epsilon={em.slot(name, 'epsilon', m.eps)}, "
            f"use_scale={m.affine}, use_bias={m.affine}")
    call = em.layer(node.target, "nn.GroupNorm", rest, "nnx.GroupNorm",
                    f"{em.slot(name, 'num_features', m.num_channels)}, {rest}")
    return em.assign(node.name, f"{call}({em.channels_last(x)})",
                     shape=tuple(em.meta(node).shape), perm=channels_last(x.ndim))


def embedding(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, ids: V) -> V:
    if m.max_norm is not None:
        raise UnsupportedError(f"{name}: Embedding(max_norm=...) renormalises its weights in forward")
    rest = f"{em.slot(name, 'num_embeddings', m.num_embeddings)}, {em.slot(name, 'features', m.embedding_dim)}"
    expr = f"{em.layer(node.target, 'nn.Embed', rest, 'nnx.Embed', rest)}({ids.expr})"
    if m.padding_idx is not None:  # torch gives that row no gradient
        expr = f"{em.helper('embed_padding')}({ids.expr}, {expr}, {m.padding_idx})"
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=(*ids.perm, ids.ndim))


def dropout(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    import torch

    spatial = isinstance(m, (torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d))
    expr = em.channels_last(x) if spatial else x.expr
    bcast = f"broadcast_dims={tuple(range(1, x.ndim - 1))}, " if spatial else ""
    rate = f"rate={em.slot(name, 'rate', m.p, dropout=True)}, {bcast}"
    call = em.layer(node.target, "nn.Dropout", f"{rate}deterministic=not train", "nnx.Dropout", rate.rstrip(", "))
    return em.assign(node.name, f"{call}({expr})", shape=x.shape,
                     perm=channels_last(x.ndim) if spatial else x.perm)


def stochastic_depth(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    return _same(em, node, x, _stochastic_depth(em, node.target, name, x, m.p, m.mode))


def _stochastic_depth(em: Emitter, key: str, name: str, x: V, p: float, mode: str) -> str:
    rate = em.slot(name, "p", p, dropout=True)
    if em.linen:
        return f"{em.helper('stochastic_depth')}(self, {x.expr}, {rate}, {mode!r}, train)"
    em.helper("stochastic_depth")
    return f"{em.attribute(key, f'StochasticDepth(p={rate}, mode={mode!r}, rngs=rngs)')}({x.expr})"


def identity_layer(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V, *a: Any, **kw: Any) -> V:
    return x


def activation(fn: Callable[[torch.nn.Module, str], str]) -> LayerHandler:
    def handler(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
        return _same(em, node, x, fn(em, m, x))
    return handler


ACTIVATIONS: dict[str, Callable[[Emitter, Any, V], str]] = {
    "ReLU": lambda em, m, x: f"nn.relu({x.expr})",
    "ReLU6": lambda em, m, x: f"nn.relu6({x.expr})",
    "LeakyReLU": lambda em, m, x: f"nn.leaky_relu({x.expr}, negative_slope={m.negative_slope})",
    "GELU": lambda em, m, x: f"nn.gelu({x.expr}, approximate={m.approximate == 'tanh'})",
    "SiLU": lambda em, m, x: f"nn.silu({x.expr})",
    "Mish": lambda em, m, x: f"{em.helper('mish')}({x.expr})",
    "Hardswish": lambda em, m, x: f"nn.hard_swish({x.expr})",
    "Hardsigmoid": lambda em, m, x: f"{em.helper('hard_sigmoid')}({x.expr})",
    "Sigmoid": lambda em, m, x: f"nn.sigmoid({x.expr})",
    "Tanh": lambda em, m, x: f"jnp.tanh({x.expr})",
    "ELU": lambda em, m, x: f"nn.elu({x.expr}, alpha={m.alpha})",
    "Softmax": lambda em, m, x: f"jax.nn.softmax({x.expr}, axis={x.perm[_dim(m.dim, x.ndim)]})",
    "LogSoftmax": lambda em, m, x: f"jax.nn.log_softmax({x.expr}, axis={x.perm[_dim(m.dim, x.ndim)]})",
}


def max_pool(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    if m.return_indices or any(d != 1 for d in _pair(m.dilation)):
        raise UnsupportedError(f"{name}: MaxPool2d with return_indices or dilation")
    return _pool(em, node, x, "max_pool2d", _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                 _pair(m.padding), m.ceil_mode)


def avg_pool(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    return _pool(em, node, x, "avg_pool2d", _pair(m.kernel_size), _pair(m.stride or m.kernel_size),
                 _pair(m.padding), m.ceil_mode, m.count_include_pad, m.divisor_override)


def _pool(em: Emitter, node: fx.Node, x: V, fn: str, k: tuple, s: tuple, p: tuple, ceil: bool,
          include_pad: bool | None = None, divisor: int | None = None) -> V:
    if x.ndim != 4:
        raise UnsupportedError(f"{fn} on a {x.ndim}-D tensor")
    extra = ""
    if fn == "avg_pool2d":
        extra = f", count_include_pad={include_pad}" + (f", divisor_override={divisor}" if divisor else "")
    expr = f"{em.helper(fn)}({em.channels_last(x)}, {k}, {s}, {p}, ceil_mode={ceil}{extra})"
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=channels_last(4))


def adaptive(em: Emitter, node: fx.Node, x: V, out: Any, kind: str) -> V:
    if x.ndim != 4:
        raise UnsupportedError(f"adaptive {kind} pool on a {x.ndim}-D tensor")
    oh, ow = _pair(out)
    xe = em.channels_last(x)
    if (oh, ow) == (1, 1) and kind == "avg":
        expr = f"{em.helper('global_mean')}({xe}, train)"
    elif kind == "avg":
        expr = f"{em.helper('adaptive_avg_pool')}({xe}, {(oh, ow)})"
    else:
        expr = f"{em.helper('adaptive_max_pool2d')}({xe}, {(oh, ow)})"
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=channels_last(4))


def adaptive_avg(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    return adaptive(em, node, x, m.output_size, "avg")


def adaptive_max(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    if m.return_indices:
        raise UnsupportedError(f"{name}: AdaptiveMaxPool2d(return_indices=True)")
    return adaptive(em, node, x, m.output_size, "max")


def flatten_layer(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    return flatten(em, node, x, const(m.start_dim), const(m.end_dim))


def upsample(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    return interpolate(em, node, x, size=const(m.size), scale_factor=const(m.scale_factor), mode=const(m.mode),
                       align_corners=const(m.align_corners))


def local_response_norm(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, x: V) -> V:
    expr = (f"{em.helper('local_response_norm')}({em.channels_last(x)}, size={m.size}, alpha={m.alpha}, "
            f"beta={m.beta}, k={m.k})")
    return em.assign(node.name, expr, shape=x.shape, perm=channels_last(x.ndim))


def multihead_attention(em: Emitter, node: fx.Node, m: torch.nn.Module, name: str, q: V, k: V | None = None,
                        v: V | None = None, **kw: Any) -> V:
    for key in ("key_padding_mask", "attn_mask"):
        if key in kw and _py(kw[key]) is not None:
            raise UnsupportedError(f"{name}: MultiheadAttention with {key}")
    if m.kdim != m.embed_dim or m.vdim != m.embed_dim or m.dropout:
        raise UnsupportedError(f"{name}: MultiheadAttention with kdim/vdim other than embed_dim, or dropout (set 0)")
    k, v = k if k is not None else kw.get("key"), v if v is not None else kw.get("value")
    need = _py(kw.get("need_weights", const(True)))
    avg = _py(kw.get("average_attn_weights", const(True)))
    rest = (f"{em.slot(name, 'embed_dim', m.embed_dim)}, {em.slot(name, 'num_heads', m.num_heads)}, "
            f"batch_first={m.batch_first}, bias={m.in_proj_bias is not None}")
    cls = em.helper("MultiheadAttention")
    call = em.layer(node.target, cls, rest, cls, rest)
    args = ", ".join(em.torch_order(t) for t in (q, k, v))
    out = em.var(node.name)
    em.line(f"{out} = {call}({args}, need_weights={need}, average_attn_weights={avg})")
    meta = em.meta(node)
    first = V(f"{out}[0]", tuple(meta[0].shape), identity(meta[0].ndim))
    second = V(f"{out}[1]", tuple(meta[1].shape), identity(meta[1].ndim)) if meta[1] is not None else const(None)
    return V(out, items=(first, second))


def layer_handler(m: torch.nn.Module) -> LayerHandler | None:
    """The handler for ``m`` when it is a torch layer computing what its class's forward computes (a
    subclass that overrides forward is traced instead), else None."""
    import torch

    nn = torch.nn
    table: list[tuple[type, LayerHandler]] = [
        (nn.Conv1d, conv), (nn.Conv2d, conv), (nn.Conv3d, conv),
        (nn.ConvTranspose1d, conv_transpose), (nn.ConvTranspose2d, conv_transpose),
        (nn.ConvTranspose3d, conv_transpose),
        (nn.Linear, linear), (nn.BatchNorm1d, batch_norm), (nn.BatchNorm2d, batch_norm), (nn.BatchNorm3d, batch_norm),
        (nn.LayerNorm, layer_norm), (nn.GroupNorm, group_norm), (nn.Embedding, embedding),
        (nn.Dropout, dropout), (nn.Dropout1d, dropout), (nn.Dropout2d, dropout), (nn.Dropout3d, dropout),
        (nn.Identity, identity_layer), (nn.MaxPool2d, max_pool), (nn.AvgPool2d, avg_pool),
        (nn.AdaptiveAvgPool2d, adaptive_avg), (nn.AdaptiveMaxPool2d, adaptive_max), (nn.Flatten, flatten_layer),
        (nn.Upsample, upsample), (nn.UpsamplingNearest2d, upsample), (nn.UpsamplingBilinear2d, upsample),
        (nn.LocalResponseNorm, local_response_norm), (nn.MultiheadAttention, multihead_attention),
    ]
    table += [(getattr(nn, n), activation(f)) for n, f in ACTIVATIONS.items()]
    for cls, handler in table:
        if isinstance(m, cls) and type(m).forward is cls.forward:
            return handler
    if type(m).__name__ == "StochasticDepth" and type(m).__module__.startswith("torchvision"):
        return stochastic_depth
    return None


# --------------------------------------------------------------------------- functions and methods


def _tensor_or_scalar(em: Emitter, v: Any, like: V) -> str:
    """``v`` (a tensor, a Python number or a known int) ready to combine elementwise with ``like``."""
    if not isinstance(v, V):
        return repr(v)
    if not v.tensor:
        return v.expr
    v = em.place(v, like)
    if v.ndim == like.ndim:
        return em.to(v, like.perm)
    if v.ndim < like.ndim:  # torch broadcasts trailing dimensions: leading ones first, then like's layout
        lead = like.ndim - v.ndim
        if tuple(like.perm) == identity(lead) + tuple(lead + q for q in v.perm):
            return v.expr  # stored as it broadcasts
        grown = V(f"jnp.reshape({em.torch_order(v)}, {(1,) * lead + tuple(v.shape)})", (1,) * lead + tuple(v.shape),
                  identity(like.ndim))
        return em.to(grown, like.perm)
    raise UnsupportedError("broadcasting a higher-rank tensor onto a lower-rank one")


def binary(symbol: str) -> Callable[..., V]:
    def handler(em: Emitter, node: fx.Node, a: Any, b: Any, **kw: Any) -> V:
        if kw.get("alpha") is not None and _py(kw["alpha"]) != 1:
            b = V(f"({_py(kw['alpha'])} * {b.expr})", b.shape, b.perm) if isinstance(b, V) else b * _py(kw["alpha"])
        ta, tb = isinstance(a, V) and a.tensor, isinstance(b, V) and b.tensor
        if not ta and not tb:  # arithmetic on shapes and constants
            pa = _py(a) if isinstance(a, V) and a.known else None
            pb = _py(b) if isinstance(b, V) and b.known else None
            ea, eb = a.expr if isinstance(a, V) else repr(a), b.expr if isinstance(b, V) else repr(b)
            py = _OPS[symbol](pa, pb) if pa is not None and pb is not None else None
            return V(f"({ea} {symbol} {eb})", py=py) if py is not None else V(f"({ea} {symbol} {eb})")
        like = a if ta and (not tb or a.ndim > b.ndim or a.ndim == b.ndim and a.expr not in em.raw) else b
        expr = f"{_tensor_or_scalar(em, a, like)} {symbol} {_tensor_or_scalar(em, b, like)}"
        return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=like.perm,
                         integer=not em.meta(node).is_floating_point())
    return handler


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
        "%": operator.mod, "**": operator.pow, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
        "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def torch_assert(em: Emitter, node: fx.Node, cond: Any, message: Any = const("")) -> V:
    """``torch._assert(cond, message)``: nothing where the example's shapes decide it (always true
    for them), else the same assert on the Flax side's sizes."""
    if isinstance(cond, V) and not cond.known:
        em.line(f"assert {cond.expr}, {_py(message)!r}")
    elif not _py(cond):
        raise UnsupportedError(f"torch._assert fails on the example inputs: {_py(message)}")
    return const(None)


def matmul(em: Emitter, node: fx.Node, a: V, b: V) -> V:
    return em.assign(node.name, f"jnp.matmul({em.torch_order(a)}, {em.torch_order(b)})",
                     shape=tuple(em.meta(node).shape), perm=identity(em.meta(node).ndim))


def unary(template: str) -> Callable[..., V]:
    def handler(em: Emitter, node: fx.Node, x: V, *a: Any, **kw: Any) -> V:
        return _same(em, node, x, template.format(x=x.expr))
    return handler


def softmax(fn: str) -> Callable[..., V]:
    def handler(em: Emitter, node: fx.Node, x: V, dim: Any = None, *a: Any, **kw: Any) -> V:
        d = _py(kw.get("dim", dim))
        return _same(em, node, x, f"{fn}({x.expr}, axis={x.perm[_dim(d, x.ndim)]})")
    return handler


def gelu(em: Emitter, node: fx.Node, x: V, approximate: Any = const("none")) -> V:
    return _same(em, node, x, f"nn.gelu({x.expr}, approximate={_py(approximate) == 'tanh'})")


def leaky_relu(em: Emitter, node: fx.Node, x: V, negative_slope: Any = const(0.01), *a: Any, **kw: Any) -> V:
    return _same(em, node, x, f"nn.leaky_relu({x.expr}, negative_slope={_py(negative_slope)})")


def f_dropout(em: Emitter, node: fx.Node, x: V, p: Any = const(0.5), training: Any = const(True), *a: Any,
              **kw: Any) -> V:
    if not _py(kw.get("training", training)):
        return x  # F.dropout(training=False): the eval-mode graph of a module that reads self.training
    rate = f"rate={em.slot(node.name, 'rate', _py(kw.get('p', p)), dropout=True)}"
    call = em.layer(node.name, "nn.Dropout", f"{rate}, deterministic=not train", "nnx.Dropout", rate)
    return _same(em, node, x, f"{call}({x.expr})")


def cat(em: Emitter, node: fx.Node, tensors: Any, dim: Any = const(0)) -> V:
    ts = tensors if isinstance(tensors, list) else list(tensors.items)
    first = ts[0]
    d = _dim(_py(dim), first.ndim)
    whole = first.expr.rsplit("[", 1)[0]
    if first.expr.endswith("[0]") and [t.expr for t in ts] == [f"{whole}[{i}]" for i in range(len(ts))] \
            and whole in em.body.args:  # a list argument, whole: as long as it is, in every instance
        items = whole
    else:
        items = f"[{', '.join(em.to(t, first.perm) for t in ts)}]"
    return em.assign(node.name, f"jnp.concatenate({items}, axis={first.perm[d]})",
                     shape=tuple(em.meta(node).shape), perm=first.perm)


def stack(em: Emitter, node: fx.Node, tensors: Any, dim: Any = const(0)) -> V:
    ts = tensors if isinstance(tensors, list) else list(tensors.items)
    first = ts[0]
    d = _dim(_py(dim), first.ndim + 1)
    perm = [p for p in first.perm]
    perm.insert(d, first.ndim)  # the new dimension last in Flax
    return em.assign(node.name, f"jnp.stack([{', '.join(em.to(t, first.perm) for t in ts)}], axis=-1)",
                     shape=tuple(em.meta(node).shape), perm=tuple(perm))


def _reduce(fn: str) -> Callable[..., V]:
    def handler(em: Emitter, node: fx.Node, x: V, dim: Any = None, keepdim: Any = const(False), *a: Any,
                **kw: Any) -> V:
        dim, keep = kw.get("dim", dim), _py(kw.get("keepdim", keepdim))
        if "dtype" in kw and _py(kw["dtype"]) is not None:
            raise UnsupportedError(f"{fn}(dtype=...)")
        dims = range(x.ndim) if dim is None or _py(dim) is None else \
            [_dim(d, x.ndim) for d in (_py(dim) if isinstance(_py(dim), (tuple, list)) else [_py(dim)])]
        axes = tuple(sorted(x.perm[d] for d in dims))
        expr = f"jnp.{fn}({x.expr}, axis={axes}{', keepdims=True' if keep else ''})"
        perm = x.perm if keep else renumber([x.perm[d] for d in range(x.ndim) if d not in dims])
        return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=perm)
    return handler


def _shape_dims(v: V) -> tuple[str, ...]:
    return tuple(f"{v.expr}.shape[{v.perm[d]}]" for d in range(v.ndim))


def size(em: Emitter, node: fx.Node, x: V, dim: Any = None) -> V:
    """A shape (or one size) read into a variable of its own: ``x`` may be reassigned afterwards."""
    if dim is not None:
        d = _dim(_py(dim), x.ndim)
        name = em.var(f"{x.expr}_{d}")
        em.line(f"{name} = {x.expr}.shape[{x.perm[d]}]")
        return V(name, py=x.shape[d])
    name = em.var(f"{x.expr}_shape")
    em.line(f"{name} = {x.expr}.shape")
    dims = tuple(f"{name}[{x.perm[d]}]" for d in range(x.ndim))
    return V(name if x.perm == identity(x.ndim) else _tup(dims), py=tuple(x.shape), dims=dims)


def attribute(em: Emitter, node: fx.Node, x: V, attr: Any) -> V:
    """``x.shape``; ``x.device`` and ``x.dtype`` only as arguments that the port drops (JAX places and
    types arrays itself)."""
    name = _py(attr)
    if name == "shape":
        return size(em, node, x)
    if name in ("device", "dtype"):
        return V("None", py=None)
    raise UnsupportedError(f"attribute .{name} of a tensor")


def arange(em: Emitter, node: fx.Node, *args: Any, **kw: Any) -> V:
    if kw.get("dtype") is not None and _py(kw["dtype"]) is not None:
        raise UnsupportedError("torch.arange(dtype=...)")
    m = em.meta(node)
    return em.assign(node.name, f"jnp.arange({', '.join(a.expr for a in args)})", shape=tuple(m.shape),
                     perm=(0,), integer=not m.is_floating_point())


def _tup(items: Any) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def dim_of(em: Emitter, node: fx.Node, x: V) -> V:
    return const(x.ndim)


def getitem(em: Emitter, node: fx.Node, x: Any, index: Any) -> V:
    if isinstance(x, V) and x.items is not None and not x.tensor:
        i = _py(index)
        if isinstance(i, slice):
            return V(f"{x.expr}[{i.start}:{i.stop}:{i.step}]", items=x.items[i])
        return x.items[i]
    if isinstance(x, list):
        return x[_py(index)]
    if isinstance(x, V) and x.dims is not None:  # a shape
        i = _py(index)
        if isinstance(i, slice):
            dims = x.dims[i]
            return V(_tup(dims), py=tuple(x.py[i]), dims=dims)
        return V(x.dims[i], py=x.py[i])
    if not (isinstance(x, V) and x.tensor):
        raise UnsupportedError(f"indexing a {type(x).__name__}")
    return _index(em, node, x, index)


def _index(em: Emitter, node: fx.Node, x: V, index: Any) -> V:
    items = list(index.items) if isinstance(index, V) and index.items is not None else [index]
    if any(isinstance(i, V) and i.tensor for i in items) or any(isinstance(i, list) for i in items):
        raise UnsupportedError("indexing with tensors (advanced indexing)")
    py = [i.py if isinstance(i, V) and i.known else i for i in items]
    n_real = sum(1 for i in py if i is not Ellipsis and i is not None)
    expanded: list[Any] = []
    for i in py:
        if i is Ellipsis:
            expanded += [slice(None)] * (x.ndim - n_real)
        else:
            expanded.append(i)
    expanded += [slice(None)] * (x.ndim - sum(1 for i in expanded if i is not None))
    per_dim, new_dims, d = {}, [], 0
    for pos, i in enumerate(expanded):
        if i is None:
            new_dims.append(pos)
            continue
        per_dim[d] = i
        d += 1
    flax = ["" for _ in range(x.ndim)]
    for d, i in per_dim.items():
        flax[x.perm[d]] = _slice_text(i, items, em)
    kept = [x.perm[d] for d in range(x.ndim) if not isinstance(per_dim[d], int)]
    perm = list(renumber(kept))
    expr = f"{x.expr}[{', '.join(f or ':' for f in flax)}]"
    for pos in new_dims:  # torch's None: a new size-1 dimension, last in Flax
        expr = f"{expr}[..., None]"
        perm.insert(pos, len(perm))
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=tuple(perm))


def _slice_text(i: Any, items: list, em: Emitter) -> str:
    if isinstance(i, int):
        return str(i)
    if isinstance(i, slice):
        parts = [_bound(b) for b in (i.start, i.stop, i.step)]
        text = f"{parts[0]}:{parts[1]}" + (f":{parts[2]}" if parts[2] else "")
        return text
    raise UnsupportedError(f"index {i!r}")


def _bound(b: Any) -> str:
    if b is None:
        return ""
    if isinstance(b, V):
        return b.expr
    return str(b)


def _target_shape(args: tuple, kwargs: dict) -> list:
    shape = args[0] if len(args) == 1 and isinstance(args[0], (V, list)) and not (
        isinstance(args[0], V) and args[0].known and isinstance(args[0].py, int)) else list(args)
    if "shape" in kwargs:
        shape = kwargs["shape"]
    if isinstance(shape, V):
        if shape.items is not None:
            shape = list(shape.items)
        elif shape.dims is not None:
            shape = [V(e, py=p) for e, p in zip(shape.dims, shape.py, strict=True)]
        else:
            shape = [const(p) for p in shape.py]
    return [s if isinstance(s, V) else const(s) for s in shape]


def reshape(em: Emitter, node: fx.Node, x: V, *args: Any, **kwargs: Any) -> V:
    target = _target_shape(args, kwargs)
    out = tuple(em.meta(node).shape)
    exprs = [t.expr for t in target]
    return _reshape(em, node, x, out, exprs)


def _reshape(em: Emitter, node: fx.Node, x: V, out: tuple[int, ...], exprs: list[str]) -> V:
    """A reshape that keeps the layout where it only merges and splits dimensions lying next to each other
    in the Flax array too; otherwise torch's order first."""
    groups = reshape_groups(x.shape, out)
    if groups is not None:
        order, ok = [], True
        for gi, _ in groups:
            axes = [x.perm[d] for d in gi]
            if axes != list(range(axes[0], axes[0] + len(axes))):
                ok = False
                break
            order.append(axes[0])
        if ok:
            placed = []  # output torch dims in Flax order: groups by Flax position, size-1 dims last
            for _, gj in sorted(zip(order, [g for _, g in groups], strict=True)):
                placed += gj
            ones = [j for j in range(len(out)) if j not in placed]
            placed += ones
            perm = tuple(placed.index(j) for j in range(len(out)))
            target = [exprs[j] for j in placed]
            if perm == identity(len(out)) and x.perm == identity(x.ndim):
                return em.assign(node.name, f"jnp.reshape({x.expr}, {_tup(target)})", shape=out, perm=perm)
            return em.assign(node.name, f"jnp.reshape({x.expr}, {_tup(target)})", shape=out, perm=perm)
    src = em.torch_order(x, "the reshape mixes dimensions that lie apart in Flax's layout: torch's order first")
    return em.assign(node.name, f"jnp.reshape({src}, {_tup(exprs)})", shape=out, perm=identity(len(out)))


def flatten(em: Emitter, node: fx.Node, x: V, start_dim: Any = const(0), end_dim: Any = const(-1)) -> V:
    s, e = _dim(_py(start_dim), x.ndim), _dim(_py(end_dim), x.ndim)
    dims = _shape_dims(x)
    out = tuple(em.meta(node).shape)
    exprs = [*dims[:s], "-1", *dims[e + 1:]]
    return _reshape(em, node, x, out, exprs)


def permute(em: Emitter, node: fx.Node, x: V, *dims: Any, **kw: Any) -> V:
    if "dims" in kw:
        order = _py(kw["dims"])
    else:
        order = _py(dims[0]) if len(dims) == 1 and isinstance(_py(dims[0]), (tuple, list)) else [_py(d) for d in dims]
    order = [_dim(d, x.ndim) for d in order]
    return V(x.expr, tuple(x.shape[d] for d in order), tuple(x.perm[d] for d in order), x.integer)  # no data moves


def transpose(em: Emitter, node: fx.Node, x: V, dim0: Any, dim1: Any) -> V:
    a, b = _dim(_py(dim0), x.ndim), _dim(_py(dim1), x.ndim)
    order = list(range(x.ndim))
    order[a], order[b] = b, a
    return V(x.expr, tuple(x.shape[d] for d in order), tuple(x.perm[d] for d in order), x.integer)


def passthrough(em: Emitter, node: fx.Node, x: V, *a: Any, **kw: Any) -> V:
    return x


def detach(em: Emitter, node: fx.Node, x: V) -> V:
    return _same(em, node, x, f"jax.lax.stop_gradient({x.expr})")


def unsqueeze(em: Emitter, node: fx.Node, x: V, dim: Any) -> V:
    d = _dim(_py(dim), x.ndim + 1)
    perm = list(x.perm)
    perm.insert(d, x.ndim)
    return em.assign(node.name, f"{x.expr}[..., None]", shape=tuple(em.meta(node).shape), perm=tuple(perm))


def squeeze(em: Emitter, node: fx.Node, x: V, dim: Any = None) -> V:
    dims = [d for d in range(x.ndim) if x.shape[d] == 1] if dim is None or _py(dim) is None else \
        [_dim(d, x.ndim) for d in (_py(dim) if isinstance(_py(dim), (tuple, list)) else [_py(dim)])]
    dims = [d for d in dims if x.shape[d] == 1]
    if not dims:
        return x
    axes = tuple(sorted(x.perm[d] for d in dims))
    perm = renumber([x.perm[d] for d in range(x.ndim) if d not in dims])
    return em.assign(node.name, f"jnp.squeeze({x.expr}, axis={axes})", shape=tuple(em.meta(node).shape), perm=perm)


def expand(em: Emitter, node: fx.Node, x: V, *sizes: Any) -> V:
    target = _target_shape(sizes, {})
    if len(target) != x.ndim:
        raise UnsupportedError("expand to more dimensions")
    inv = inverse(x.perm)
    flax = [target[inv[b]].expr if target[inv[b]].py != -1 else f"{x.expr}.shape[{b}]" for b in range(x.ndim)]
    return em.assign(node.name, f"jnp.broadcast_to({x.expr}, {_tup(flax)})", shape=tuple(em.meta(node).shape),
                     perm=x.perm)


def _split_points(n: int, sizes: list[int]) -> list[int]:
    points, at = [], 0
    for s in sizes[:-1]:
        at += s
        points.append(at)
    return points


def chunk(em: Emitter, node: fx.Node, x: V, chunks: Any, dim: Any = const(0)) -> V:
    d = _dim(_py(dim), x.ndim)
    n = _py(chunks)
    step = -(-x.shape[d] // n)
    sizes = [min(step, x.shape[d] - i) for i in range(0, x.shape[d], step)]
    return _split(em, node, x, d, sizes)


def split(em: Emitter, node: fx.Node, x: V, split_size_or_sections: Any, dim: Any = const(0)) -> V:
    d = _dim(_py(dim), x.ndim)
    s = _py(split_size_or_sections)
    sizes = list(s) if isinstance(s, (list, tuple)) else [min(s, x.shape[d] - i) for i in range(0, x.shape[d], s)]
    return _split(em, node, x, d, sizes)


def _split(em: Emitter, node: fx.Node, x: V, d: int, sizes: list[int]) -> V:
    name = em.var(node.name)
    em.line(f"{name} = jnp.split({x.expr}, {_split_points(x.shape[d], sizes)}, axis={x.perm[d]})")
    shape = list(x.shape)
    items = []
    for i, s in enumerate(sizes):
        shape[d] = s
        items.append(V(f"{name}[{i}]", tuple(shape), x.perm, x.integer))
    return V(name, items=tuple(items))


def f_linear(em: Emitter, node: fx.Node, x: V, weight: V, bias: V | None = None) -> V:
    expr, perm = _last_dim_first(em, x, "a linear map acts on torch's last dimension: back to torch's order")
    w = weight.expr if weight.kernel == "linear" else f"{weight.expr}.T"
    b = f" + {bias.expr}" if isinstance(bias, V) and bias.tensor else ""
    return em.assign(node.name, f"{expr} @ {w}{b}", shape=tuple(em.meta(node).shape), perm=perm)


def f_conv(em: Emitter, node: fx.Node, x: V, weight: V, bias: Any = None, stride: Any = const(1),
           padding: Any = const(0), dilation: Any = const(1), groups: Any = const(1)) -> V:
    n = x.ndim - 2
    k = weight.shape[2:]
    st, dl, p = _pair(_py(stride), n), _pair(_py(dilation), n), _py(padding)
    if isinstance(p, str):
        p = [(0, 0)] * n if p == "valid" else [(d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2)
                                                for kk, d in zip(k, dl, strict=True)]
    else:
        p = [(q, q) for q in _pair(p, n)]
    b = bias.expr if isinstance(bias, V) and bias.tensor else "None"
    layout = "flax" if weight.kernel == "conv" else "torch"
    expr = (f"{em.helper('conv')}({em.channels_last(x)}, {weight.expr}, {b}, {st}, {tuple(p)}, {dl}, {_py(groups)}, "
            f"{layout!r})")
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=channels_last(x.ndim))


def f_layer_norm(em: Emitter, node: fx.Node, x: V, normalized_shape: Any, weight: Any = None, bias: Any = None,
                 eps: Any = const(1e-5)) -> V:
    k = len(_py(normalized_shape))
    tail = tuple(range(x.ndim - k, x.ndim))
    expr, perm = (x.expr, x.perm) if tuple(x.perm[-k:]) == tail else \
        (em.torch_order(x, "layer_norm normalises torch's last dimensions: back to torch's order"), identity(x.ndim))
    w = weight.expr if isinstance(weight, V) and weight.tensor else "None"
    b = bias.expr if isinstance(bias, V) and bias.tensor else "None"
    return em.assign(node.name, f"{em.helper('layer_norm')}({expr}, {w}, {b}, {_py(eps)})",
                     shape=tuple(em.meta(node).shape), perm=perm)


def f_pad(em: Emitter, node: fx.Node, x: V, pad: Any, mode: Any = const("constant"), value: Any = const(None)) -> V:
    p = list(_py(pad))
    widths = [(0, 0)] * x.ndim
    for i in range(len(p) // 2):  # torch lists (before, after) from the last dimension backwards
        widths[x.perm[x.ndim - 1 - i]] = (p[2 * i], p[2 * i + 1])
    m = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[_py(mode)]
    extra = f", constant_values={_py(value)}" if m == "constant" and _py(value) else ""
    return em.assign(node.name, f"jnp.pad({x.expr}, {widths}, mode={m!r}{extra})", shape=tuple(em.meta(node).shape),
                     perm=x.perm)


def interpolate(em: Emitter, node: fx.Node, x: V, size: Any = None, scale_factor: Any = None,
                mode: Any = const("nearest"), align_corners: Any = None, *a: Any, **kw: Any) -> V:
    md = _py(mode)
    if x.ndim != 4 or md not in ("nearest", "bilinear"):
        raise UnsupportedError(f"interpolate(mode={md!r}) on a {x.ndim}-D tensor (nearest and bilinear on images)")
    out = tuple(em.meta(node).shape[2:])
    ac = bool(_py(align_corners)) if align_corners is not None else False
    expr = f"{em.helper('interpolate')}({em.channels_last(x)}, {out}, {md!r}, align_corners={ac})"
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=channels_last(4))


def f_adaptive_avg(em: Emitter, node: fx.Node, x: V, output_size: Any) -> V:
    return adaptive(em, node, x, _py(output_size), "avg")


def f_adaptive_max(em: Emitter, node: fx.Node, x: V, output_size: Any, return_indices: Any = const(False)) -> V:
    return adaptive(em, node, x, _py(output_size), "max")


def f_max_pool(em: Emitter, node: fx.Node, x: V, kernel_size: Any, stride: Any = None, padding: Any = const(0),
               dilation: Any = const(1), ceil_mode: Any = const(False), return_indices: Any = const(False)) -> V:
    k = _pair(_py(kernel_size))
    s = _pair(_py(stride)) if stride is not None and _py(stride) not in (None, []) else k
    return _pool(em, node, x, "max_pool2d", k, s, _pair(_py(padding)), bool(_py(ceil_mode)))


def f_avg_pool(em: Emitter, node: fx.Node, x: V, kernel_size: Any, stride: Any = None, padding: Any = const(0),
               ceil_mode: Any = const(False), count_include_pad: Any = const(True), divisor_override: Any = None) -> V:
    k = _pair(_py(kernel_size))
    s = _pair(_py(stride)) if stride is not None and _py(stride) not in (None, []) else k
    return _pool(em, node, x, "avg_pool2d", k, s, _pair(_py(padding)), bool(_py(ceil_mode)),
                 bool(_py(count_include_pad)), _py(divisor_override) if divisor_override is not None else None)


def sdpa(em: Emitter, node: fx.Node, q: V, k: V, v: V, attn_mask: Any = None, dropout_p: Any = const(0.0),
         is_causal: Any = const(False), scale: Any = None, **kw: Any) -> V:
    if _py(dropout_p):
        raise UnsupportedError("scaled_dot_product_attention with dropout_p > 0 (the check sets it to 0)")
    mask = em.torch_order(attn_mask) if isinstance(attn_mask, V) and attn_mask.tensor else "None"
    sc = _py(scale) if scale is not None else None
    expr = (f"{em.helper('scaled_dot_product_attention')}({em.torch_order(q)}, {em.torch_order(k)}, "
            f"{em.torch_order(v)}, {mask}, is_causal={bool(_py(is_causal))}, scale={sc})")
    return em.assign(node.name, expr, shape=tuple(em.meta(node).shape), perm=identity(q.ndim))


def f_stochastic_depth(em: Emitter, node: fx.Node, x: V, p: Any, mode: Any, training: Any = const(True)) -> V:
    if not _py(training):
        return x
    return _same(em, node, x, _stochastic_depth(em, node.name, node.name, x, _py(p), _py(mode)))


def f_hard_sigmoid(em: Emitter, node: fx.Node, x: V, *a: Any, **kw: Any) -> V:
    return _same(em, node, x, f"{em.helper('hard_sigmoid')}({x.expr})")


def _maximum(em: Emitter, node: fx.Node, a: V, b: Any = None, *r: Any, **kw: Any) -> V:
    if isinstance(b, V) and b.tensor:
        return _same(em, node, a, f"jnp.maximum({a.expr}, {_tensor_or_scalar(em, b, a)})")
    raise UnsupportedError("torch.max with a dim (values and indices): use amax")


def _functions() -> dict[Any, Callable[..., V]]:
    import torch
    import torch.nn.functional as F

    table: dict[Any, Callable[..., V]] = {
        operator.add: binary("+"), operator.iadd: binary("+"), operator.sub: binary("-"), operator.mul: binary("*"),
        operator.imul: binary("*"), operator.truediv: binary("/"), operator.itruediv: binary("/"),
        operator.floordiv: binary("//"),
        operator.mod: binary("%"), operator.matmul: matmul, operator.getitem: getitem,
        operator.neg: unary("-{x}"), operator.eq: binary("=="), operator.ne: binary("!="),
        operator.lt: binary("<"), operator.le: binary("<="), operator.gt: binary(">"), operator.ge: binary(">="),
        torch._assert: torch_assert,
        torch.add: binary("+"), torch.sub: binary("-"), torch.mul: binary("*"), torch.div: binary("/"),
        torch.matmul: matmul, torch.bmm: matmul, torch.cat: cat, torch.concat: cat, torch.stack: stack,
        torch.flatten: flatten, torch.reshape: reshape, torch.permute: permute, torch.transpose: transpose,
        torch.squeeze: squeeze, torch.unsqueeze: unsqueeze, torch.chunk: chunk, torch.split: split,
        torch.mean: _reduce("mean"), torch.sum: _reduce("sum"), torch.amax: _reduce("max"),
        torch.maximum: _maximum,
        torch.sigmoid: unary("nn.sigmoid({x})"), torch.tanh: unary("jnp.tanh({x})"), torch.relu: unary("nn.relu({x})"),
        torch.exp: unary("jnp.exp({x})"), torch.sqrt: unary("jnp.sqrt({x})"), torch.rsqrt: unary("jax.lax.rsqrt({x})"),
        torch.erf: unary("jax.scipy.special.erf({x})"), torch.abs: unary("jnp.abs({x})"),
        torch.softmax: softmax("jax.nn.softmax"), torch.log_softmax: softmax("jax.nn.log_softmax"),
        F.relu: unary("nn.relu({x})"), F.relu6: unary("nn.relu6({x})"), F.gelu: gelu, F.silu: unary("nn.silu({x})"),
        F.mish: lambda em, node, x, *a, **k: _same(em, node, x, f"{em.helper('mish')}({x.expr})"),
        F.hardswish: unary("nn.hard_swish({x})"), F.hardsigmoid: f_hard_sigmoid,
        F.sigmoid: unary("nn.sigmoid({x})"), F.tanh: unary("jnp.tanh({x})"), F.leaky_relu: leaky_relu,
        F.softmax: softmax("jax.nn.softmax"), F.log_softmax: softmax("jax.nn.log_softmax"), F.dropout: f_dropout,
        F.adaptive_avg_pool2d: f_adaptive_avg, F.adaptive_max_pool2d: f_adaptive_max, F.max_pool2d: f_max_pool,
        F.avg_pool2d: f_avg_pool, F.interpolate: interpolate, F.pad: f_pad, F.linear: f_linear,
        F.conv1d: f_conv, F.conv2d: f_conv, F.conv3d: f_conv, F.layer_norm: f_layer_norm,
        F.scaled_dot_product_attention: sdpa, builtins.getattr: attribute, torch.arange: arange,
        operator.pow: binary("**"),
    }
    try:
        import torchvision.ops

        table[torchvision.ops.stochastic_depth] = f_stochastic_depth
    except Exception:  # noqa: S110 - torchvision is optional
        pass
    return table


FUNCTIONS: dict[Any, Callable[..., V]] = _functions()

METHODS: dict[str, Callable[..., V]] = {
    "add": binary("+"), "add_": binary("+"), "sub": binary("-"), "mul": binary("*"), "mul_": binary("*"),
    "div": binary("/"), "matmul": matmul, "view": reshape, "reshape": reshape, "permute": permute,
    "transpose": transpose, "flatten": flatten, "mean": _reduce("mean"), "sum": _reduce("sum"), "amax": _reduce("max"),
    "chunk": chunk, "split": split, "unsqueeze": unsqueeze, "squeeze": squeeze, "expand": expand,
    "contiguous": passthrough, "clone": passthrough, "detach": detach, "size": size, "dim": dim_of,
    "sigmoid": unary("nn.sigmoid({x})"), "tanh": unary("jnp.tanh({x})"), "relu": unary("nn.relu({x})"),
    "relu_": unary("nn.relu({x})"), "exp": unary("jnp.exp({x})"), "sqrt": unary("jnp.sqrt({x})"),
    "softmax": softmax("jax.nn.softmax"), "log_softmax": softmax("jax.nn.log_softmax"),
}

__all__ = ["FUNCTIONS", "METHODS", "layer_handler", "table", "math", "canonical", "channels_last"]


def table() -> OpTable:
    """The op table as the emitter reads it (the dicts themselves: a test may plant an entry)."""
    return OpTable(layer_handler, FUNCTIONS, METHODS, attribute)
