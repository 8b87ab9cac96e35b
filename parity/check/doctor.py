"""Known convention mismatches between a torch module and a Flax module, found before any number is
compared (``parity doctor``; ``check_pair`` runs it first). Each finding names where it is.

What it reads: the torch modules' attributes, the Flax submodules' attributes (intercepted while the
module traces on the inputs), the primitives of the Flax forward pass, and the global precision
switches. Every rule is a mismatch users have filed as "outputs differ": docs/parity.md, "Doctor".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.check.nnx import LinenView
from parity.convert.rules import normalize

if TYPE_CHECKING:
    import flax.linen as fnn
    import torch

# A Flax submodule, Linen or NNX, read by its attributes (padding, strides, epsilon...) as far as it has them
FlaxLayer = Any


@dataclass(frozen=True)
class Finding:
    where: str  # module path (normalized) or "global"
    kind: str  # "padding", "groups", "batchnorm", "layernorm", "groupnorm", "gelu", "avgpool", "flatten", ...
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.message}"


def _flax_modules(flax_module: fnn.Module | LinenView, args: tuple,
                  mode: Callable[[bool], dict]) -> tuple[dict[str, FlaxLayer], set[str]]:
    """(normalized path -> bound Flax submodule, primitives of the forward pass)."""
    import flax.linen as nn
    import jax

    seen: dict[str, FlaxLayer] = {}

    def intercept(next_fun, a, kw, ctx):
        if ctx.method_name == "__call__" and ctx.module.path:
            seen.setdefault(normalize(".".join(ctx.module.path)), ctx.module)
        return next_fun(*a, **kw)

    with nn.intercept_methods(intercept):
        variables = jax.eval_shape(lambda *x: flax_module.init(jax.random.key(0), *x, **mode(False)), *args)
    if isinstance(flax_module, LinenView):  # an NNX module: its submodules' attributes
        from flax import nnx

        for path, m in nnx.iter_graph(flax_module.module()):
            if isinstance(m, nnx.Module) and path:
                seen.setdefault(normalize(".".join(map(str, path))), m)
    jaxpr = jax.make_jaxpr(lambda v, *x: flax_module.apply(v, *x, **mode(False)))(variables, *args)
    prims: set[str] = set()

    def walk(j):
        made_by = {}
        for e in j.eqns:
            prims.add(e.primitive.name)
            for v in e.outvars:
                made_by[id(v)] = e.primitive.name
            # a flatten of an image (4-D -> 2-D) fed by a transpose keeps torch's (C, H, W) order
            if e.primitive.name == "reshape" and len(e.outvars[0].aval.shape) == 2 \
                    and len(getattr(e.invars[0], "aval", None).shape) == 4:
                prims.add("flatten_transposed" if made_by.get(id(e.invars[0])) == "transpose" else "flatten_nhwc")
            for p in e.params.values():
                inner = getattr(p, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jaxpr.jaxpr)
    return seen, prims


def _pairs(v: int | tuple, n: int) -> list[tuple[int, int]]:
    v = (v,) * n if isinstance(v, int) else tuple(v)
    return [(p, p) if isinstance(p, int) else tuple(p) for p in v]


def _conv(where: str, t: torch.nn.Module, f: FlaxLayer) -> list[Finding]:
    out = []
    n = len(t.kernel_size)
    strides = f.strides if f.strides is not None else 1
    strides = (strides,) * n if isinstance(strides, int) else tuple(strides)
    t_pad = t.padding if isinstance(t.padding, str) else _pairs(t.padding, n)
    if isinstance(f.padding, str):
        if f.padding.upper() == "SAME" and any(s > 1 for s in strides):
            out.append(Finding(where, "padding", f"Flax pads 'SAME' on a stride-{max(strides)} conv: it puts the "
                               f"extra row at the end (asymmetric), torch pads {t.padding} on both sides"))
        elif f.padding.upper() == "SAME" and t_pad not in ("same", [((k - 1) // 2, k // 2) for k in t.kernel_size]):
            out.append(Finding(where, "padding", f"Flax pads 'SAME', torch pads {t.padding}"))
        elif f.padding.upper() == "VALID" and t_pad not in ("valid", [(0, 0)] * n):
            out.append(Finding(where, "padding", f"Flax pads 'VALID', torch pads {t.padding}"))
    elif not isinstance(t_pad, str):
        f_pad = _pairs(f.padding, n)
        if any(lo != hi for lo, hi in f_pad):
            out.append(Finding(where, "padding", f"Flax pads asymmetrically {f_pad}, torch pads {t.padding} on "
                               "both sides"))
        elif f_pad != t_pad:
            out.append(Finding(where, "padding", f"Flax pads {f_pad}, torch {t.padding}"))
    if tuple(strides) != tuple(t.stride):
        out.append(Finding(where, "stride", f"Flax strides {tuple(strides)}, torch {tuple(t.stride)}"))
    if f.feature_group_count != t.groups:
        out.append(Finding(where, "groups", f"Flax feature_group_count={f.feature_group_count}, torch "
                           f"groups={t.groups}" + (" (depthwise)" if t.groups == t.in_channels else "")))
    return out


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """The padding of the stride-dilated input that ``lax.conv_transpose`` uses for 'SAME' / 'VALID'."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    return pad_a, pad_len - pad_a


def _conv_transpose(where: str, t: torch.nn.Module, f: FlaxLayer) -> list[Finding]:
    """torch's ConvTranspose(k, s, p, output_padding, dilation) is Flax's ConvTranspose
    (transpose_kernel=False, the kernel flipped by the weight rules) padding the stride-dilated input
    (d(k-1) - p, d(k-1) - p + output_padding) per dimension."""
    out = []
    n = len(t.kernel_size)
    strides = f.strides if f.strides is not None else 1
    strides = (strides,) * n if isinstance(strides, int) else tuple(strides)
    dil = f.kernel_dilation if f.kernel_dilation is not None else 1
    dil = (dil,) * n if isinstance(dil, int) else tuple(dil)
    want = [(d * (k - 1) - p, d * (k - 1) - p + op) for k, d, p, op in
            zip(t.kernel_size, t.dilation, t.padding, t.output_padding, strict=True)]
    if isinstance(f.padding, str):
        got = [_transpose_padding(d * (k - 1) + 1, s, f.padding.upper())
               for k, d, s in zip(t.kernel_size, dil, strides, strict=True)]
    else:
        got = _pairs(f.padding, n)
    if got != want:
        out.append(Finding(where, "padding", f"Flax's ConvTranspose pads the dilated input {got}"
                           + (f" ({f.padding!r})" if isinstance(f.padding, str) else "")
                           + f"; torch's padding={tuple(t.padding)}, output_padding={tuple(t.output_padding)} is "
                           f"{want} there"))
    if tuple(strides) != tuple(t.stride):
        out.append(Finding(where, "stride", f"Flax strides {tuple(strides)}, torch {tuple(t.stride)}"))
    if tuple(dil) != tuple(t.dilation):
        out.append(Finding(where, "dilation", f"Flax kernel_dilation {tuple(dil)}, torch {tuple(t.dilation)}"))
    if t.groups != 1:
        out.append(Finding(where, "groups", f"torch groups={t.groups}; Flax's ConvTranspose has no groups"))
    if getattr(f, "transpose_kernel", False):
        out.append(Finding(where, "layout", "transpose_kernel=True: the weight rules map torch's kernel for "
                           "transpose_kernel=False (flipped in space, (I, O, *k) -> (*k, I, O))"))
    return out


def _stock_batchnorm(f: FlaxLayer) -> bool:
    """Flax's own BatchNorm (Linen or NNX): Flax's momentum convention and a biased running variance."""
    import flax.linen as nn
    from flax import nnx

    return type(f) in (nn.BatchNorm, nnx.BatchNorm)


def _batchnorm(where: str, t: torch.nn.Module, f: FlaxLayer) -> list[Finding]:
    out = []
    if t.momentum is None:
        out.append(Finding(where, "batchnorm", "torch momentum=None (a cumulative average) has no Flax equivalent"))
    elif _stock_batchnorm(f) and not np.isclose(f.momentum, 1 - t.momentum):
        out.append(Finding(where, "batchnorm", f"momentum: torch {t.momentum} weighs the new batch, Flax "
                           f"{f.momentum} weighs the old average; the same update is Flax momentum={1 - t.momentum:g}"))
    if hasattr(f, "epsilon") and not np.isclose(f.epsilon, t.eps):
        out.append(Finding(where, "batchnorm", f"epsilon: torch {t.eps:g}, Flax {f.epsilon:g}"))
    if _stock_batchnorm(f):
        out.append(Finding(where, "batchnorm", "Flax's BatchNorm keeps the biased batch variance as its running "
                           "variance; torch keeps the unbiased one (x n/(n-1)): running statistics differ in train "
                           "mode"))
    return out


def _norm(where: str, kind: str, t: torch.nn.Module, f: FlaxLayer) -> list[Finding]:
    out = []
    if hasattr(f, "epsilon") and not np.isclose(f.epsilon, t.eps):
        out.append(Finding(where, kind, f"epsilon: torch {t.eps:g}, Flax {f.epsilon:g}"
                           + (" (Flax's default is 1e-6, torch's 1e-5)" if np.isclose(f.epsilon, 1e-6) else "")))
    if kind == "groupnorm" and getattr(f, "num_groups", t.num_groups) != t.num_groups:
        out.append(Finding(where, kind, f"num_groups: torch {t.num_groups}, Flax {f.num_groups}"))
    return out


def diagnose(torch_module: torch.nn.Module, flax_module: fnn.Module | LinenView, torch_args: tuple, flax_args: tuple,
             mode: Callable[[bool], dict], images: bool = True) -> list[Finding]:
    """Every known convention mismatch between the two modules (see the module docstring)."""
    findings: list[Finding] = []
    flax_mods, prims = _flax_modules(flax_module, flax_args, mode)
    torch_mods = {normalize(n): m for n, m in torch_module.named_modules() if n}
    for where, t in torch_mods.items():
        f = flax_mods.get(where)
        try:  # a layer the doctor cannot read is one finding; the rest of the model is still read
            findings += _module(where, t, f, prims)
        except Exception as e:
            against = f" against {type(f).__name__}" if f is not None else ""
            findings.append(Finding(where, "doctor", f"could not read this layer ({type(t).__name__}{against}): "
                                    f"{type(e).__name__}: {e}"))
    findings += _flatten(torch_module, torch_args, prims, images)
    findings += _precision()
    return findings


def _module(where: str, t: torch.nn.Module, f: FlaxLayer | None, prims: set[str]) -> list[Finding]:
    """The findings for one torch module ``t`` and its Flax counterpart ``f`` (None when not found)."""
    import torch

    kind = type(t).__name__
    out: list[Finding] = []
    if f is not None and kind.startswith("ConvTranspose"):
        out += _conv_transpose(where, t, f)
    elif f is not None and kind.startswith("Conv") and hasattr(f, "padding"):
        out += _conv(where, t, f)
    elif f is not None and kind.startswith("BatchNorm"):
        out += _batchnorm(where, t, f)
    elif f is not None and kind == "LayerNorm":
        out += _norm(where, "layernorm", t, f)
    elif f is not None and kind == "GroupNorm":
        out += _norm(where, "groupnorm", t, f)
    if isinstance(t, torch.nn.GELU):
        if t.approximate == "none" and "tanh" in prims and "erf" not in prims:
            out.append(Finding(where, "gelu", "torch's GELU is exact (erf); the Flax forward pass uses the "
                               "tanh approximation (flax.linen.gelu's default approximate=True)"))
        elif t.approximate == "tanh" and "erf" in prims and "tanh" not in prims:
            out.append(Finding(where, "gelu", "torch's GELU is the tanh approximation; Flax's is exact"))
    if isinstance(t, (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d)) and np.any(t.padding):
        out.append(Finding(where, "avgpool", f"torch pads and count_include_pad={t.count_include_pad}: "
                           "check that Flax's avg_pool uses the same count_include_pad"))
    if isinstance(t, (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d, torch.nn.MaxPool1d,
                      torch.nn.MaxPool2d, torch.nn.MaxPool3d)) and t.ceil_mode:
        out.append(Finding(where, "pool", "torch pools with ceil_mode=True; Flax's pooling has no ceil_mode "
                           "(pad the end by the extra window, with -inf for max pooling)"))
    if isinstance(t, torch.nn.Dropout) and t.p > 0:
        out.append(Finding(where, "dropout", f"p={t.p}: the frameworks cannot draw the same masks; "
                           "train-mode quantities will differ (set p=0 for the check)"))
    return out


def _flatten(torch_module: torch.nn.Module, torch_args: tuple, prims: set[str], images: bool) -> list[Finding]:
    """torch flattens (C, H, W); an NHWC array flattens (H, W, C). Flagged where torch flattens a
    map larger than 1x1 and the Flax forward pass flattens an image it did not transpose."""
    import torch

    if not images or "flatten_nhwc" not in prims:
        return []
    shapes: dict[str, tuple] = {}
    def hook(name: str) -> Callable:
        def record(_m, i, _o) -> None:  # returns None: a forward hook's return value replaces the output
            shapes.setdefault(name, tuple(i[0].shape))
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in torch_module.named_modules()
             if isinstance(m, torch.nn.Flatten)]
    try:
        with torch.no_grad():
            torch_module.eval()(*torch_args)
    finally:
        for h in hooks:
            h.remove()
    return [Finding(normalize(n), "flatten", f"torch flattens a {s[1]}x{s[2]}x{s[3]} (C, H, W) map; an NHWC "
                    "array flattens (H, W, C): the next Linear's rows are in another order unless the Flax side "
                    "transposes to (C, H, W) first")
            for n, s in shapes.items() if len(s) == 4 and s[2] * s[3] > 1]


def _precision() -> list[Finding]:
    import jax
    import torch

    out = []
    if torch.get_float32_matmul_precision() != "highest":
        out.append(Finding("global", "precision", f"torch float32 matmul precision is "
                           f"{torch.get_float32_matmul_precision()!r} (TF32 or bfloat16 passes on GPU)"))
    if torch.backends.cuda.matmul.allow_tf32 or (torch.cuda.is_available() and torch.backends.cudnn.allow_tf32):
        out.append(Finding("global", "precision", "torch allows TF32 (torch.backends.cuda.matmul.allow_tf32 or "
                           "cudnn.allow_tf32): 10-bit mantissas on Ampere and later GPUs"))
    jp = jax.config.jax_default_matmul_precision
    if jp not in (None, "highest", "float32"):
        out.append(Finding("global", "precision", f"jax_default_matmul_precision={jp!r}"))
    return out
