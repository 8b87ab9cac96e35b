"""torch state_dict <-> Flax variables for every variant, as a rule table on leaves.

A Flax path is the torch key split on '.', with only the leaf renamed and, for two kinds of
leaf, the layout changed. The one model-specific rule is VGG's ``classifier.0.weight``, whose
input rows follow torch's C,H,W flattening while Flax flattens H,W,C.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from parity import arrays, specs

__all__ = ["torch_to_flax", "flax_to_torch", "ConversionError", "expected_state_dict", "RULES", "torch_shapes",
           "identify", "classifier_size"]


@dataclass(frozen=True)
class Rule:
    torch_leaf: str
    ndim: int
    collection: str
    flax_leaf: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


RULES: tuple[Rule, ...] = (
    # conv OIHW <-> HWIO; a grouped conv's (O, I/g, kh, kw) maps the same way.
    Rule("weight", 4, "params", "kernel", lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1)),
    Rule("weight", 2, "params", "kernel", lambda a: a.T, lambda a: a.T),  # linear (out,in) <-> (in,out)
    Rule("weight", 1, "params", "scale", _same, _same),  # BatchNorm affine
    Rule("bias", 1, "params", "bias", _same, _same),
    Rule("running_mean", 1, "batch_stats", "mean", _same, _same),
    Rule("running_var", 1, "batch_stats", "var", _same, _same),
    # torch counts in int64; jaxnets in int32, which works without jax_enable_x64.
    Rule("num_batches_tracked", 0, "batch_stats", "num_batches_tracked",
         lambda a: a.astype(np.int32), lambda a: a.astype(np.int64)),
)
_BY_TORCH = {(r.torch_leaf, r.ndim): r for r in RULES}
_BY_FLAX = {(r.collection, r.flax_leaf, r.ndim): r for r in RULES}


class ConversionError(ValueError):
    """Every mismatch between a checkpoint and the variant, reported at once."""

    def __init__(self, name: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"checkpoint does not fit {name} ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems) + "\n(pass strict=False to convert what fits)")


def expected_state_dict(name: str, **overrides) -> OrderedDict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of torchnets' state_dict, built on the meta device (no memory, no init)."""
    import torchnets

    with torch.device("meta"):
        model = torchnets.build(name, **overrides)
    return OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in model.state_dict().items())


def _flatten_rows(spec: specs.Spec) -> dict[str, tuple[int, int, int]]:
    """Linear layers fed by a flattened feature map: key -> (C, H, W) of that map."""
    if isinstance(spec, specs.VGGSpec):
        return {"classifier.0.weight": (spec.last_channels, spec.POOL_OUT, spec.POOL_OUT)}
    return {}


def _chw_to_hwc_rows(a: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """torch Linear weight (out, C*H*W) -> Flax kernel (H*W*C, out)."""
    c, h, w = chw
    return a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, a.shape[0])


def _hwc_to_chw_rows(a: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    c, h, w = chw
    return a.reshape(h, w, c, a.shape[1]).transpose(3, 2, 0, 1).reshape(a.shape[1], c * h * w)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def _dtype_name(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return str(v.dtype).removeprefix("torch.")
    return np.dtype(v.dtype).name


_FLOATS = {"float16", "bfloat16", "float32", "float64"}


def _check(name: str, got: Mapping[str, Any], want: Mapping[str, tuple], strict: bool,
           label: Callable[[str], str]) -> dict[str, str]:
    """key -> problem for every missing, unexpected, mis-shaped and mis-typed key; raises when strict.

    Floating weights must share one dtype (the checkpoint's: float32, float64, bfloat16...);
    the BatchNorm counters must be integers.
    """
    problems = {k: f"missing {label(k)}: expected shape {s}" for k, (s, _) in want.items() if k not in got}
    problems |= {k: f"unexpected {label(k)}: shape {_shape(v)}" for k, v in got.items() if k not in want}
    floats = Counter(_dtype_name(v) for k, v in got.items() if k in want and want[k][1].is_floating_point)
    common = floats.most_common(1)[0][0] if floats else "float32"
    for k, v in got.items():
        if k not in want:
            continue
        shape, dtype = want[k]
        got_dtype = _dtype_name(v)
        if _shape(v) != shape:
            problems[k] = f"wrong shape {label(k)}: expected {shape}, got {_shape(v)}"
        elif dtype.is_floating_point and (got_dtype not in _FLOATS or got_dtype != common):
            problems[k] = f"wrong dtype {label(k)}: expected {common} like the other weights, got {got_dtype}"
        elif not dtype.is_floating_point and not got_dtype.startswith(("int", "uint")):
            problems[k] = f"wrong dtype {label(k)}: expected an integer counter, got {got_dtype}"
    if problems and strict:
        raise ConversionError(name, list(problems.values()))
    return problems


def torch_to_flax(state_dict: Mapping[str, torch.Tensor], name: str, strict: bool = True,
                  **overrides: Any) -> dict | tuple[dict, list[str]]:
    """Flax variables ``{'params', 'batch_stats'}`` (numpy arrays) from a torchvision-layout
    state_dict. With ``strict=False`` returns ``(variables, problems)`` and skips what did not fit."""
    spec = specs.get(name, **overrides)
    want = expected_state_dict(name, **overrides)
    problems = _check(name, state_dict, want, strict, repr)
    rows = _flatten_rows(spec)
    out: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        if key in problems:
            continue
        *path, leaf = key.split(".")
        rule = _BY_TORCH[(leaf, tensor.dim())]
        a = arrays.to_numpy(tensor, copy=False)  # the copy is made once, below
        a = _chw_to_hwc_rows(a, rows[key]) if key in rows else rule.to_flax(a)
        node = out.setdefault(rule.collection, {})
        for part in path:
            node = node.setdefault(part, {})
        node[rule.flax_leaf] = np.array(a, order="C")  # ascontiguousarray would make 0-d 1-d
    out.setdefault("batch_stats", {})
    return out if strict else (out, list(problems.values()))


def flax_paths(variables: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """torch key -> (flax path, leaf) for every leaf of ``variables``, by the inverse rule."""
    out: dict[str, tuple[str, Any]] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, str(k)))
            return
        collection, *mid, leaf = path
        rule = _BY_FLAX.get((collection, leaf, np.ndim(node)))
        torch_leaf = rule.torch_leaf if rule else f"<{collection}:{leaf}>"
        out[".".join([*mid, torch_leaf])] = ("/".join(path), node)

    walk(variables, ())
    return out


def flax_to_torch(variables: Mapping[str, Any], name: str, strict: bool = True,
                  **overrides: Any) -> OrderedDict | tuple[OrderedDict, list[str]]:
    """A torchvision-layout state_dict (OrderedDict of tensors, torchnets' key order) from Flax
    variables. With ``strict=False`` returns ``(state_dict, problems)``."""
    spec = specs.get(name, **overrides)
    want = expected_state_dict(name, **overrides)
    by_key = flax_paths(variables)
    flax_want = {}
    rows = _flatten_rows(spec)
    for key, (shape, dtype) in want.items():
        *_, leaf = key.split(".")
        if key in rows:
            c, h, w = rows[key]
            shape = (c * h * w, shape[0])
        elif len(shape) == 4:
            shape = tuple(shape[i] for i in (2, 3, 1, 0))
        elif len(shape) == 2:
            shape = shape[::-1]
        flax_want[key] = (shape, dtype)
    leaves = {k: v for k, (_, v) in by_key.items()}
    problems = _check(name, leaves, flax_want, strict, lambda k: repr(by_key[k][0]) if k in by_key
                      else repr(_flax_path(k, len(want[k][0]))))
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (shape, _) in want.items():
        if key in problems:
            continue
        rule = _BY_TORCH[(key.split(".")[-1], len(shape))]
        a = np.asarray(leaves[key])
        a = _hwc_to_chw_rows(a, rows[key]) if key in rows else rule.to_torch(a)
        sd[key] = arrays.to_torch(a)
    return sd if strict else (sd, list(problems.values()))


def torch_shapes(obj: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """torch key -> torch-layout shape of a state_dict, or of Flax variables (by the inverse rules)."""
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k: _shape(v) for k, v in obj.items()}
    out = {}
    for key, (_, leaf) in flax_paths(obj).items():
        shape = _shape(leaf)
        out[key] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    return out


@functools.cache
def _signature(name: str, num_classes: int | None = None) -> tuple:
    ov = {"num_classes": num_classes} if num_classes else {}
    return tuple((k, s) for k, (s, _) in expected_state_dict(name, **ov).items())


def classifier_size(shapes: Mapping[str, tuple[int, ...]], name: str) -> int | None:
    """The number of classes the checkpoint's last layer has, if it has ``name``'s keys."""
    last = _signature(name)[-1][0]  # the output layer's bias: fc.bias / classifier.6.bias
    return shapes[last][0] if last in shapes and len(shapes[last]) == 1 else None


def fits(shapes: Mapping[str, tuple[int, ...]], name: str, num_classes: int | None = None) -> bool:
    """Every key of ``name`` (with that classifier size) is there with its shape, and no other."""
    want = _signature(name, num_classes)
    return len(want) == len(shapes) and all(shapes.get(k) == s for k, s in want)


def identify(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, dict]]:
    """Every (variant, overrides) whose state_dict has exactly these keys and shapes; a classifier
    size other than the variant's default becomes the ``num_classes`` override."""
    found = []
    for name in specs.list_models():
        n = classifier_size(shapes, name)
        default = specs.get(name).num_classes
        if n is not None and fits(shapes, name, None if n == default else n):
            found.append((name, {} if n == default else {"num_classes": n}))
    return found


def _flax_path(key: str, ndim: int) -> str:
    *path, leaf = key.split(".")
    rule = _BY_TORCH[(leaf, ndim)]
    return "/".join([rule.collection, *path, rule.flax_leaf])


def _as_float32(a: Any) -> Any:
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def verify(state_dict: Mapping[str, torch.Tensor], variables: Mapping[str, Any], name: str,
           batch: int = 2, seed: int = 0, **overrides) -> tuple[float, float]:
    """(max |torch - flax|, max |torch|) of both eval-mode models on one random batch, in float32."""
    import jax

    import jaxnets
    import torchnets

    spec = specs.get(name, **overrides)
    size = min(spec.input_size, max(spec.min_size, 64))
    x = np.random.default_rng(seed).standard_normal((batch, spec.in_channels, size, size), np.float32)
    tm = torchnets.build(name, **overrides)
    tm.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    with torch.no_grad():
        yt = tm.eval()(torch.from_numpy(x)).numpy()
    v32 = jax.tree_util.tree_map(_as_float32, dict(variables))
    yj = np.asarray(jaxnets.build(name, **overrides).apply(v32, x.transpose(0, 2, 3, 1)))
    return float(np.abs(yt - yj).max()), float(np.abs(yt).max())


# --------------------------------------------------------------------------- the command


def _overrides(args: argparse.Namespace) -> dict:
    return {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}


def _variant(shapes: dict, args: argparse.Namespace) -> tuple[str, dict] | str:
    """(model, overrides) for the checkpoint, or an error message. A classifier size that is the only
    difference from --model is read from the checkpoint; a wrong or missing --model is named."""
    if args.model and args.model not in specs.list_models():
        return f"unknown model {args.model!r}; valid: {', '.join(specs.list_models())}"
    if args.model:
        ov = _overrides(args)
        if ov or fits(shapes, args.model):
            return args.model, ov  # converting reports every problem, if any
        n = classifier_size(shapes, args.model)
        if n is not None and fits(shapes, args.model, n):
            return args.model, {"num_classes": n}
    found = identify(shapes)
    if args.model and found:
        names = ", ".join(m + (f" (num_classes={o['num_classes']})" if o else "") for m, o in found)
        return (f"the checkpoint does not fit {args.model}; every key and shape fits {names}: "
                f"run with --model {found[0][0]}" + (" (or another of these)" if len(found) > 1 else ""))
    if args.model:
        return args.model, _overrides(args)  # no variant fits: the conversion lists every problem
    if len(found) == 1:
        return found[0]
    if found:
        return (f"the checkpoint fits {len(found)} variants with the same weights ({', '.join(m for m, _ in found)}); "
                "pass --model")
    return "no variant has exactly this checkpoint's keys and shapes; pass --model NAME to see every problem"


def run(args: argparse.Namespace) -> int:
    """``parity convert``: read, identify, convert, verify on a batch, then write (never over the input)."""
    from parity import io

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if args.output.resolve() == args.input.resolve():
        print("error: OUTPUT must differ from INPUT (the input is never overwritten)", file=sys.stderr)
        return 2
    try:
        obj = io.load(args.input)
        kind = "torch" if io.is_state_dict(obj) else "flax"
        target = args.to or ("flax" if kind == "torch" else "torch")
        found = _variant(torch_shapes(obj), args)
        if isinstance(found, str):
            print(f"error: {found}", file=sys.stderr)
            return 1
        model, ov = found
        if not args.model:
            print(f"{args.input}: identified as {model} from its keys and shapes")
        if ov.get("num_classes") and not args.num_classes:
            print(f"{model}: the checkpoint's classifier has {ov['num_classes']} classes; converting with "
                  f"num_classes={ov['num_classes']}")
        if kind == "torch":
            sd, variables = obj, torch_to_flax(obj, model, **ov)
        else:
            variables, sd = obj, flax_to_torch(obj, model, **ov)
        diff, scale = verify(sd, variables, model, **ov)
    except (io.CheckpointError, ConversionError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{model}: {kind} -> {target}; one random batch through both frameworks: "
          f"max |torch - flax| = {diff:.3g} (output scale {scale:.3g})")
    if not np.isfinite(diff) or diff > 1e-4 * max(scale, 1.0):
        print("error: the converted model does not reproduce the original; nothing written", file=sys.stderr)
        return 1
    io.save(args.output, variables if target == "flax" else sd)
    print(f"wrote {args.output}")
    return 0
