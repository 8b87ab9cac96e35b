"""The one weight-mapping engine: a torch state_dict <-> the variables of a Flax module whose names
mirror the torch module's, by rules held as data.

A torch key ``a.b.0.weight`` names module ``a.b.0`` and leaf ``weight``; the module's type decides the
Flax collection, leaf name and layout (``RULES``); a key no rule names keeps its leaf name and layout.
Module paths match when they are equal after Linen's list naming (``blocks_0``) is read as torch's
(``blocks.0``). Two ways to build a map, one engine:

- ``WeightMap.derive``: the Flax tree is torch's, leaf renamed (the twins; a checkpoint converted
  without a Flax module at hand). ``layouts`` gives a key another layout (VGG's flattened classifier).
- ``WeightMap.match``: against a Flax module's own variables (users' pairs); ``key_map`` places what
  the rules cannot. Every key that does not correspond is listed in one ``MappingError``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import traverse_util

FlaxKey = tuple[str, ...]  # (collection, *module path, leaf)
Shape = tuple[int, ...]
KeyMap = Mapping[str, str] | Callable[[str], "str | None"]


class MappingError(ValueError):
    """The two modules' weights do not correspond one to one."""


@dataclass(frozen=True)
class Layout:
    """How one tensor moves between torch's layout and Flax's.

    ``copy``; ``conv`` (O, I/g, *k) -> (*k, I/g, O); ``conv_transpose`` (I, O, *k) -> (*k, I, O) flipped in
    space, for Flax's ConvTranspose(transpose_kernel=False); ``linear`` (O, I) -> (I, O); ``counter``
    torch's int64 batch count as int32, which JAX holds without x64; ``linear_chw`` a Linear fed by a
    (C, H, W) map that torch flattened and Flax flattens as (H, W, C): its rows permuted, ``chw`` the map;
    ``permute`` torch's dimensions in the order ``axes`` (a port's raw parameter stored the way it
    broadcasts against a channels-last map: torch's (C, 1, 1) as (1, 1, C))."""

    kind: str
    chw: tuple[int, int, int] | None = None
    axes: tuple[int, ...] | None = None

    def moved(self, a: np.ndarray, to_torch: bool) -> np.ndarray:
        """``a`` moved to torch's layout (or Flax's) as one permutation of its axes, a view, short of the
        last reshape (``reshaped``: ``linear_chw``'s 4-D view; the others need none): a copy of it is
        the move in one pass."""
        nd = a.ndim
        if self.kind == "conv":
            return a.transpose(nd - 1, nd - 2, *range(nd - 2)) if to_torch else a.transpose(*range(2, nd), 1, 0)
        if self.kind == "conv_transpose":
            return (_flip_space(a.transpose(nd - 2, nd - 1, *range(nd - 2))) if to_torch
                    else _flip_space(a).transpose(*range(2, nd), 0, 1))
        if self.kind == "linear":
            return a.T
        if self.kind == "linear_chw":
            c, h, w = self.chw
            return (a.reshape(h, w, c, a.shape[1]).transpose(3, 2, 0, 1) if to_torch
                    else a.reshape(a.shape[0], c, h, w).transpose(2, 3, 1, 0))
        if self.kind == "counter":
            return a.astype(np.int64 if to_torch else np.int32)
        if self.kind == "permute":
            return a.transpose(tuple(int(i) for i in np.argsort(self.axes)) if to_torch else self.axes)
        return a

    def reshaped(self, moved: np.ndarray, to_torch: bool) -> np.ndarray:
        """``moved(a, to_torch)`` in its layout's shape: ``linear_chw``'s 4-D view as the 2-D kernel."""
        if self.kind != "linear_chw":
            return moved
        # the sizes spelled out, not -1: a tensor with a zero-sized axis cannot infer one
        return (moved.reshape(moved.shape[0], math.prod(moved.shape[1:])) if to_torch
                else moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1]))

    def to_flax(self, a: np.ndarray) -> np.ndarray:
        return self.reshaped(self.moved(a, False), False)

    def to_torch(self, a: np.ndarray) -> np.ndarray:
        return self.reshaped(self.moved(a, True), True)

    def flax_copy(self, a: np.ndarray, dtype: Any = None) -> np.ndarray:
        """A fresh C-contiguous array in Flax's layout (in ``dtype``), written in one pass over ``a``
        (the permuted view copied, then reshaped: ``linear_chw`` reshaped first would copy twice)."""
        return self.reshaped(_written(self.moved(a, False), dtype), False)

    def torch_copy(self, a: np.ndarray, dtype: Any = None) -> np.ndarray:
        """A fresh C-contiguous array in torch's layout (in ``dtype``), written in one pass over ``a``."""
        return self.reshaped(_written(self.moved(a, True), dtype), True)

    def torch_rows(self, a: np.ndarray, start: int, stop: int, dtype: Any = None) -> np.ndarray | None:
        """Rows ``start:stop`` (torch's first axis) of ``torch_copy(a, dtype)``, read from the slice of ``a``
        that holds them: Flax's last axis for ``linear``, ``linear_chw`` and ``conv``, its first for
        ``copy``. None for the layouts whose rows are spread otherwise (read those whole)."""
        if self.kind in ("linear", "linear_chw", "conv") and a.ndim >= 2:
            # the slice gathered first, then moved: a permuted copy of a strided slice is twice as slow
            return self.torch_copy(_written(a[..., start:stop], None), dtype)
        if self.kind == "copy" and a.ndim >= 1:
            return np.array(a[start:stop], dtype, order="C")
        return None

    def flax_shape(self, shape: Sequence[int]) -> Shape:
        """The Flax shape of a torch tensor of ``shape`` (no data moved)."""
        return tuple(self.to_flax(np.empty(tuple(shape), np.uint8)).shape)


# torch copies these between each other (numpy's bfloat16 and the rest stay with numpy)
_TORCH_COPIES = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64))
_TORCH_COPY_MIN = 1 << 20  # elements: below it numpy's copy costs less than torch's start


def _written(view: np.ndarray, dtype: Any) -> np.ndarray:
    """``view`` written C-contiguous (in ``dtype``): by torch's copy where it can, which is blocked and
    threaded (numpy's permuted copy is neither: a VGG classifier weight's move took 3x as long), else
    numpy's. The same values either way: a permutation and an IEEE cast."""
    out_dtype = view.dtype if dtype is None else np.dtype(dtype)
    if (view.size < _TORCH_COPY_MIN or view.dtype not in _TORCH_COPIES or out_dtype not in _TORCH_COPIES
            or any(s < 0 for s in view.strides) or not view.dtype.isnative):
        # np.array, not ascontiguousarray: that would make a 0-d counter 1-d
        return np.array(view, out_dtype, order="C")
    import torch  # here, not at the top: the converter stays torch-free for small tensors

    out = np.empty(view.shape, out_dtype)
    with warnings.catch_warnings():
        # a read-only view (a memory-mapped file) is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        torch.from_numpy(out).copy_(torch.from_numpy(view))
    return out


def _flip_space(a: np.ndarray) -> np.ndarray:
    """``a`` reversed along its spatial axes (2 on), a view."""
    return np.flip(a, axis=tuple(range(2, a.ndim)))


COPY, CONV, CONV_TRANSPOSE, LINEAR, COUNTER = (Layout(k) for k in ("copy", "conv", "conv_transpose", "linear",
                                                                   "counter"))


@dataclass(frozen=True)
class Rule:
    collection: str
    leaf: str
    layout: Layout


# (torch module type name, torch leaf) -> where and how the tensor lives in Flax
RULES: dict[tuple[str, str], Rule] = {}
for _t in ("Conv1d", "Conv2d", "Conv3d"):
    RULES[(_t, "weight")], RULES[(_t, "bias")] = Rule("params", "kernel", CONV), Rule("params", "bias", COPY)
for _t in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
    RULES[(_t, "weight")] = Rule("params", "kernel", CONV_TRANSPOSE)
    RULES[(_t, "bias")] = Rule("params", "bias", COPY)
RULES[("Linear", "weight")], RULES[("Linear", "bias")] = Rule("params", "kernel", LINEAR), Rule("params", "bias", COPY)
for _t in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"):
    RULES[(_t, "weight")], RULES[(_t, "bias")] = Rule("params", "scale", COPY), Rule("params", "bias", COPY)
    RULES[(_t, "running_mean")] = Rule("batch_stats", "mean", COPY)
    RULES[(_t, "running_var")] = Rule("batch_stats", "var", COPY)
    RULES[(_t, "num_batches_tracked")] = Rule("batch_stats", "num_batches_tracked", COUNTER)
for _t in ("LayerNorm", "GroupNorm", "RMSNorm"):
    RULES[(_t, "weight")], RULES[(_t, "bias")] = Rule("params", "scale", COPY), Rule("params", "bias", COPY)
RULES[("Embedding", "weight")] = Rule("params", "embedding", COPY)

# torch state that stock Flax modules do not keep: matched only where the Flax module has it
TORCH_ONLY = ("num_batches_tracked",)


def normalize(path: str) -> str:
    """A module path in one spelling for both frameworks: dots, and Linen's ``name_3`` as ``name.3``."""
    return re.sub(r"_(\d+)(?=\.|/|$)", r".\1", path.replace("/", "."))


def flatten(tree: Mapping[str, Any]) -> dict[FlaxKey, Any]:
    """Nested variables -> {(collection, *path, leaf): array} (flax's own tree utility)."""
    return traverse_util.flatten_dict(tree) if tree else {}


def unflatten(flat: Mapping[FlaxKey, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat)) if flat else {}


def parse_flax_key(key: str | FlaxKey) -> FlaxKey:
    """``"params/a/b/kernel"`` (or dots) -> ``("params", "a", "b", "kernel")``."""
    return tuple(key) if isinstance(key, tuple) else tuple(re.split(r"[/.]", key))


@dataclass(frozen=True)
class Entry:
    """One torch tensor and the Flax leaf that holds it."""

    torch_key: str
    flax_key: FlaxKey
    layout: Layout


def module_types(module: object) -> dict[str, tuple[str, ...]]:
    """Module path -> the names of its class and of every base class (a torch module's
    ``named_modules``), so that a subclass of a layer (a ``LayerNorm2d(nn.LayerNorm)``) gets its rule."""
    return {n: tuple(c.__name__ for c in type(m).__mro__) for n, m in module.named_modules()}


def _rule(types: Mapping[str, str | tuple[str, ...]], key: str) -> tuple[str, str, Rule | None]:
    mod, _, leaf = key.rpartition(".")
    names = types.get(mod, ())
    for name in (names,) if isinstance(names, str) else names:
        if (name, leaf) in RULES:
            return mod, leaf, RULES[(name, leaf)]
    return mod, leaf, None


class WeightMap:
    """The one-to-one correspondence between a torch state_dict and Flax variables (``entries``, in
    torch's key order). Build it with ``derive`` or ``match``."""

    def __init__(self, entries: Sequence[Entry], torch_shapes: Mapping[str, Shape]):
        self.entries = list(entries)
        self.by_torch = {e.torch_key: e for e in self.entries}
        self.by_flax = {e.flax_key: e for e in self.entries}
        self.torch_shapes = {e.torch_key: tuple(torch_shapes[e.torch_key]) for e in self.entries}
        self.flax_shapes = {e.flax_key: e.layout.flax_shape(torch_shapes[e.torch_key]) for e in self.entries}

    @classmethod
    def derive(cls, torch_shapes: Mapping[str, Shape], module_types: Mapping[str, str | tuple[str, ...]],
               layouts: Mapping[str, Layout] | None = None) -> WeightMap:
        """The Flax tree named as torch's: module path split on '.', leaf and layout by the rules."""
        entries = []
        for key in torch_shapes:
            mod, leaf, rule = _rule(module_types, key)
            coll, fleaf, layout = (rule.collection, rule.leaf, rule.layout) if rule else ("params", leaf, COPY)
            path = tuple(mod.split(".")) if mod else ()
            entries.append(Entry(key, (coll, *path, fleaf), (layouts or {}).get(key, layout)))
        return cls(entries, torch_shapes)

    @classmethod
    def match(cls, torch_shapes: Mapping[str, Shape], module_types: Mapping[str, str | tuple[str, ...]],
              flax_shapes: Mapping[FlaxKey, Shape], key_map: KeyMap | None = None,
              layouts: Mapping[str, Layout] | None = None) -> WeightMap:
        """The correspondence with a Flax module's own variables, found by the rules (or ``key_map``:
        torch key -> Flax key, a dict or a function returning None where the rules should decide;
        ``layouts``: torch key -> how it moves, where the rules do not say)."""
        by_norm: dict[tuple[str, str], list[FlaxKey]] = {}
        for fk in flax_shapes:
            by_norm.setdefault((fk[0], normalize(".".join(fk[1:]))), []).append(fk)
        lookup = key_map.get if isinstance(key_map, Mapping) else key_map
        entries, unmatched, taken = [], [], set()
        for tk, shape in torch_shapes.items():
            mod, leaf, rule = _rule(module_types, tk)
            layout = (layouts or {}).get(tk, rule.layout if rule else COPY)
            explicit = lookup(tk) if lookup else None
            if explicit is not None:
                fk = parse_flax_key(explicit)
                if fk not in flax_shapes:
                    unmatched.append(f"{tk} {tuple(shape)} (mapped to {'/'.join(fk)}, which the Flax module "
                                     "does not have)")
                    continue
            else:
                coll, fleaf = (rule.collection, rule.leaf) if rule else ("params", leaf)
                found = by_norm.get((coll, normalize(f"{mod}.{fleaf}" if mod else fleaf)), [])
                if leaf in TORCH_ONLY and len(found) != 1:
                    continue  # state the Flax module does not keep: nothing to compare
                if len(found) != 1:
                    unmatched.append(f"{tk} {tuple(shape)}" + (f" (several Flax leaves: {found})" if found else ""))
                    continue
                fk = found[0]
            want, got = tuple(flax_shapes[fk]), layout.flax_shape(shape)
            if got != want:
                unmatched.append(f"{tk} {tuple(shape)} -> {'/'.join(fk)} {want}: shapes differ (the {layout.kind} "
                                 f"rule gives {got})")
                continue
            taken.add(fk)
            entries.append(Entry(tk, fk, layout))
        missing = [f"{'/'.join(fk)} {tuple(s)}" for fk, s in flax_shapes.items() if fk not in taken]
        if unmatched or missing:
            raise MappingError(
                "the torch and Flax weights do not correspond one to one; pass key_map={torch key: "
                "'collection/path/leaf'} for what the rules cannot place.\n"
                f"torch keys without a Flax leaf ({len(unmatched)}):\n  " + "\n  ".join(unmatched or ["-"])
                + f"\nFlax leaves without a torch key ({len(missing)}):\n  " + "\n  ".join(missing or ["-"]))
        return cls(entries, torch_shapes)

    @property
    def param_keys(self) -> set[str]:
        """torch keys of the parameters (Flax collection ``params``)."""
        return {e.torch_key for e in self.entries if e.flax_key[0] == "params"}

    @property
    def stat_keys(self) -> set[str]:
        """torch keys of the statistics (collection ``batch_stats``), counters excluded."""
        return {e.torch_key for e in self.entries if e.flax_key[0] == "batch_stats" and e.layout != COUNTER}

    @property
    def counter_keys(self) -> set[str]:
        return {e.torch_key for e in self.entries if e.layout == COUNTER}

    def flax_path(self, torch_key: str) -> str:
        return "/".join(self.by_torch[torch_key].flax_key)

    def to_flax(self, state_dict: Mapping[str, Any], keys: Sequence[str] | None = None,
                dtype: Any = None) -> dict[str, Any]:
        """Flax variables (nested dicts of numpy arrays, C-contiguous copies) from torch-layout arrays;
        ``keys``: only those torch keys; ``dtype``: the floating arrays cast to it in the same pass."""
        chosen = self.entries if keys is None else [self.by_torch[k] for k in keys]

        def moved(e: Entry) -> np.ndarray:
            a = np.asarray(state_dict[e.torch_key])
            return e.layout.flax_copy(a, dtype if dtype is not None and np.issubdtype(a.dtype, np.floating) else None)
        return unflatten({e.flax_key: moved(e) for e in chosen})

    def to_json(self) -> dict:
        """The map as data (a port saves it beside its weights; ``from_json`` reads it back)."""
        return {"entries": [{"torch": e.torch_key, "flax": "/".join(e.flax_key), "layout": e.layout.kind,
                             **({"chw": list(e.layout.chw)} if e.layout.chw else {}),
                             **({"axes": list(e.layout.axes)} if e.layout.axes else {}),
                             "shape": list(self.torch_shapes[e.torch_key])} for e in self.entries]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WeightMap:
        try:
            entries = [Entry(d["torch"], tuple(d["flax"].split("/")),
                             Layout(d["layout"], tuple(d["chw"]) if "chw" in d else None,
                                    tuple(d["axes"]) if "axes" in d else None)) for d in data["entries"]]
            shapes = {d["torch"]: tuple(d["shape"]) for d in data["entries"]}
        except (KeyError, TypeError, AttributeError) as e:
            raise MappingError(f"not a weight map: {type(e).__name__}: {e}") from e
        return cls(entries, shapes)

    def to_torch(self, variables: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        """torch-layout arrays (torch's key order) for every mapped Flax leaf present in ``variables``
        (e.g. the parameters alone)."""
        flat = flatten(variables)
        return OrderedDict((e.torch_key, e.layout.torch_copy(np.asarray(flat[e.flax_key])))
                           for e in self.entries if e.flax_key in flat)


def check_covers(wmap: WeightMap, torch_shapes: Mapping[str, Shape], flax_shapes: Mapping[FlaxKey, Shape]) -> None:
    """``wmap`` maps exactly these torch keys onto exactly these Flax leaves, shapes included; else one
    ``MappingError`` listing every key that does not correspond."""
    problems = [f"torch key {k} {tuple(s)}: not in the map" for k, s in torch_shapes.items()
                if k not in wmap.by_torch and k.rpartition(".")[2] not in TORCH_ONLY]
    problems += [f"map entry {k}: the torch module has no such key" for k in wmap.by_torch if k not in torch_shapes]
    problems += [f"{k}: torch shape {tuple(torch_shapes[k])}, the map's {wmap.torch_shapes[k]}"
                 for k in wmap.by_torch if k in torch_shapes and tuple(torch_shapes[k]) != wmap.torch_shapes[k]]
    problems += [f"Flax leaf {'/'.join(fk)} {tuple(s)}: not in the map" for fk, s in flax_shapes.items()
                 if fk not in wmap.by_flax]
    problems += [f"map entry {'/'.join(fk)}: the Flax module has no such leaf" for fk in wmap.by_flax
                 if fk not in flax_shapes]
    problems += [f"{'/'.join(fk)}: Flax shape {tuple(flax_shapes[fk])}, the map gives {wmap.flax_shapes[fk]}"
                 for fk in wmap.by_flax if fk in flax_shapes and tuple(flax_shapes[fk]) != wmap.flax_shapes[fk]]
    if problems:
        raise MappingError(f"the weight map does not fit these modules ({len(problems)} problem(s)):\n  "
                           + "\n  ".join(problems))
