"""torch state_dict <-> Flax variables for every built-in variant, through the one weight-mapping
engine (``parity.convert.rules``).

The twins' Flax names mirror torch's by design, so each variant's map is the generic rules derived
from torchnets' module tree, plus one layout of its own: VGG's ``classifier.0.weight``, whose input
rows follow torch's (C, H, W) flattening while Flax flattens (H, W, C).
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

import netspecs
from parity.convert import arrays
from parity.convert.rules import RULES, FlaxKey, Layout, Shape, WeightMap, flatten, unflatten

if TYPE_CHECKING:
    import torch

    ArrayLike = torch.Tensor | np.ndarray  # or a jax array

Key = str | FlaxKey  # a torch key, or a Flax key (collection, *path, leaf)

__all__ = ["torch_to_flax", "flax_to_torch", "ConversionError", "twin_map", "expected_state_dict", "identify",
           "classifier_size", "checkpoint_shapes", "verify"]


class ConversionError(ValueError):
    """Every mismatch between a checkpoint and the variant, reported at once."""

    def __init__(self, name: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"checkpoint does not fit {name} ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems) + "\n(pass strict=False to convert what fits)")


def _frozen(overrides: Mapping[str, object]) -> tuple:
    return tuple(sorted(overrides.items()))


@functools.cache
def _meta(name: str, overrides: tuple) -> tuple[OrderedDict, dict[str, str]]:
    """(torch key -> (shape, dtype), module path -> type name) of torchnets' ``name``, built on the
    meta device (no memory, no initialisation)."""
    import torch

    import torchnets

    with torch.device("meta"):
        model = torchnets.build(name, **dict(overrides))
    state = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())
    return state, {n: type(m).__name__ for n, m in model.named_modules()}


def expected_state_dict(name: str, **overrides: object) -> OrderedDict[str, tuple[Shape, torch.dtype]]:
    """torch key -> (shape, dtype) of torchnets' state_dict for ``name``."""
    return OrderedDict(_meta(name, _frozen(overrides))[0])


def variant_layouts(spec: netspecs.Spec) -> dict[str, Layout]:
    """The variant's own layouts beyond the generic rules: a Linear fed by a flattened (C, H, W) map
    (VGG's classifier.0)."""
    if isinstance(spec, netspecs.VGGSpec):
        return {"classifier.0.weight": Layout("linear_chw", (spec.last_channels, spec.POOL_OUT, spec.POOL_OUT))}
    return {}


def twin_map(name: str, **overrides: object) -> WeightMap:
    """The weight map of the twins of ``name``: ``rules.RULES`` over torchnets' module tree, plus
    ``variant_layouts``. Cached by the rules and layouts in force (they are data: a test may plant a
    wrong rule)."""
    spec = netspecs.get(name, **overrides)  # unknown names and overrides raise here
    layouts = variant_layouts(spec)
    return _twin_map(name, _frozen(overrides), tuple(RULES.items()), tuple(layouts.items()))


@functools.lru_cache(maxsize=128)
def _twin_map(name: str, overrides: tuple, rules: tuple, layouts: tuple) -> WeightMap:
    state, types = _meta(name, overrides)
    return WeightMap.derive({k: s for k, (s, _) in state.items()}, types, dict(layouts))


def _shape(a: ArrayLike) -> Shape:
    return tuple(int(s) for s in a.shape)


def _dtype_name(v: ArrayLike) -> str:
    import torch

    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return np.dtype(v.dtype).name


_FLOATS = {"float16", "bfloat16", "float32", "float64"}


def _check(name: str, got: Mapping[Key, ArrayLike], want: Mapping[Key, tuple[Shape, bool]], strict: bool,
           label: Callable[[Key], str]) -> dict[Key, str]:
    """key -> problem for every missing, unexpected, mis-shaped and mis-typed key; raises when strict.
    ``want``: key -> (shape, whether floating). Floating weights share one dtype (the checkpoint's:
    float32, float64, bfloat16...); the BatchNorm counters are integers."""
    problems = {k: f"missing {label(k)}: expected shape {s}" for k, (s, _) in want.items() if k not in got}
    problems |= {k: f"unexpected {label(k)}: shape {_shape(v)}" for k, v in got.items() if k not in want}
    floats = Counter(_dtype_name(v) for k, v in got.items() if k in want and want[k][1])
    common = floats.most_common(1)[0][0] if floats else "float32"
    for k, v in got.items():
        if k not in want:
            continue
        shape, floating = want[k]
        got_dtype = _dtype_name(v)
        if _shape(v) != shape:
            problems[k] = f"wrong shape {label(k)}: expected {shape}, got {_shape(v)}"
        elif floating and (got_dtype not in _FLOATS or got_dtype != common):
            problems[k] = f"wrong dtype {label(k)}: expected {common} like the other weights, got {got_dtype}"
        elif not floating and not got_dtype.startswith(("int", "uint")):
            problems[k] = f"wrong dtype {label(k)}: expected an integer counter, got {got_dtype}"
    if problems and strict:
        raise ConversionError(name, list(problems.values()))
    return problems


def torch_to_flax(state_dict: Mapping[str, torch.Tensor], name: str, strict: bool = True,
                  **overrides: object) -> dict | tuple[dict, list[str]]:
    """Flax variables ``{'params', 'batch_stats'}`` (numpy arrays) from a torchvision-layout
    state_dict. With ``strict=False`` returns ``(variables, problems)`` and skips what did not fit."""
    wmap = twin_map(name, **overrides)
    floating = {k: dt.is_floating_point for k, (_, dt) in expected_state_dict(name, **overrides).items()}
    want = {k: (s, floating[k]) for k, s in wmap.torch_shapes.items()}
    problems = _check(name, state_dict, want, strict, repr)
    keys = [k for k in state_dict if k not in problems]
    out = wmap.to_flax({k: arrays.to_numpy(state_dict[k], copy=False) if hasattr(state_dict[k], "detach")
                        else np.asarray(state_dict[k]) for k in keys}, keys)
    out.setdefault("batch_stats", {})
    return out if strict else (out, list(problems.values()))


def flax_to_torch(variables: Mapping[str, Any], name: str, strict: bool = True,
                  **overrides: object) -> OrderedDict | tuple[OrderedDict, list[str]]:
    """A torchvision-layout state_dict (OrderedDict of tensors, torchnets' key order) from Flax
    variables. With ``strict=False`` returns ``(state_dict, problems)``."""
    wmap = twin_map(name, **overrides)
    floating = {k: dt.is_floating_point for k, (_, dt) in expected_state_dict(name, **overrides).items()}
    want = {e.flax_key: (wmap.flax_shapes[e.flax_key], floating[e.torch_key]) for e in wmap.entries}
    flat = flatten(variables)
    problems = _check(name, flat, want, strict, lambda fk: repr("/".join(fk)))
    fitting = unflatten({fk: v for fk, v in flat.items() if fk not in problems})
    sd = OrderedDict((k, arrays.to_torch(a)) for k, a in wmap.to_torch(fitting).items())
    return sd if strict else (sd, list(problems.values()))


# --------------------------------------------------------------------------- what a checkpoint is


def checkpoint_shapes(obj: Mapping[str, Any]) -> tuple[str, dict[Key, Shape]]:
    """("torch", torch key -> shape) for a state_dict, ("flax", Flax key -> shape) for variables."""
    from parity.convert import files

    if files.is_state_dict(obj):
        return "torch", {k: _shape(v) for k, v in obj.items()}
    return "flax", {k: _shape(np.asarray(v)) for k, v in flatten(obj).items()}


def _last_bias(name: str) -> str:
    """The output layer's bias (fc.bias / classifier.6.bias): its length is the classifier size."""
    return next(reversed(expected_state_dict(name)))


def classifier_size(shapes: Mapping[Key, Shape], name: str, kind: str = "torch") -> int | None:
    """The number of classes the checkpoint's last layer has, if it has ``name``'s keys."""
    key = _last_bias(name)
    if kind == "flax":
        key = twin_map(name).by_torch[key].flax_key
    return shapes[key][0] if key in shapes and len(shapes[key]) == 1 else None


def fits(shapes: Mapping[Key, Shape], name: str, num_classes: int | None = None, kind: str = "torch") -> bool:
    """Every key of ``name`` (with that classifier size) is there with its shape, and no other."""
    wmap = twin_map(name, **({"num_classes": num_classes} if num_classes else {}))
    want = wmap.torch_shapes if kind == "torch" else wmap.flax_shapes
    return len(want) == len(shapes) and all(shapes.get(k) == s for k, s in want.items())


def identify(shapes: Mapping[Key, Shape], kind: str = "torch") -> list[tuple[str, dict]]:
    """Every (variant, overrides) whose checkpoint has exactly these keys and shapes; a classifier
    size other than the variant's default becomes the ``num_classes`` override."""
    found = []
    for name in netspecs.list_models():
        n = classifier_size(shapes, name, kind)
        default = netspecs.get(name).num_classes
        if n is not None and fits(shapes, name, None if n == default else n, kind):
            found.append((name, {} if n == default else {"num_classes": n}))
    return found


def verify(state_dict: Mapping[str, torch.Tensor], variables: Mapping[str, Any], name: str,
           batch: int = 2, seed: int = 0, **overrides: object) -> tuple[float, float]:
    """(max |torch - flax|, max |torch|) of both eval-mode models on one random batch, in float32."""
    import jax
    import torch

    import jaxnets
    import torchnets
    from parity import layout

    spec = netspecs.get(name, **overrides)
    size = min(spec.input_size, max(spec.min_size, 64))
    x = np.random.default_rng(seed).standard_normal((batch, spec.in_channels, size, size), np.float32)
    tm = torchnets.build(name, **overrides)
    tm.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    with torch.no_grad():
        yt = tm.eval()(torch.from_numpy(x)).numpy()
    v32 = jax.tree_util.tree_map(arrays.as_float32, dict(variables))
    yj = np.asarray(jaxnets.build(name, **overrides).apply(v32, layout.channels_last(x)))
    return float(np.abs(yt - yj).max()), float(np.abs(yt).max())
