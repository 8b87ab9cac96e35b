"""Weights of any torch module <-> the variables of a Flax module whose names mirror it.

A torch key ``a.b.0.weight`` names module ``a.b.0`` and leaf ``weight``; the module's type decides
the Flax collection, leaf name and layout (``RULES``). Module paths match when they are equal after
Linen's list naming (``blocks_0``) is read as torch's (``blocks.0``). Keys the rules do not place
can be given explicitly: a dict or a function from torch key to Flax key (``"params/a/b/kernel"``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


class MappingError(ValueError):
    """The two modules' weights do not correspond one to one."""


# (torch module type name, torch leaf) -> (Flax collection, Flax leaf, layout)
RULES: dict[tuple[str, str], tuple[str, str, str]] = {}
for _conv in ("Conv1d", "Conv2d", "Conv3d"):
    RULES[(_conv, "weight")] = ("params", "kernel", "conv")  # (O, I/g, *k) -> (*k, I/g, O)
    RULES[(_conv, "bias")] = ("params", "bias", "copy")
for _conv in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
    # torch's transposed conv is the gradient of a conv: Flax's ConvTranspose (transpose_kernel=False)
    # needs the kernel flipped in space, (I, O, *k) -> (*k, I, O)
    RULES[(_conv, "weight")] = ("params", "kernel", "conv_transpose")
    RULES[(_conv, "bias")] = ("params", "bias", "copy")
RULES[("Linear", "weight")] = ("params", "kernel", "linear")  # (O, I) -> (I, O)
RULES[("Linear", "bias")] = ("params", "bias", "copy")
for _norm in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"):
    RULES[(_norm, "weight")] = ("params", "scale", "copy")
    RULES[(_norm, "bias")] = ("params", "bias", "copy")
    RULES[(_norm, "running_mean")] = ("batch_stats", "mean", "copy")
    RULES[(_norm, "running_var")] = ("batch_stats", "var", "copy")
for _norm in ("LayerNorm", "GroupNorm", "RMSNorm"):
    RULES[(_norm, "weight")] = ("params", "scale", "copy")
    RULES[(_norm, "bias")] = ("params", "bias", "copy")
RULES[("Embedding", "weight")] = ("params", "embedding", "copy")

# torch state that stock Flax modules do not keep: compared only where the Flax module has it
TORCH_ONLY = ("num_batches_tracked",)


def normalize(path: str) -> str:
    """A module path in one spelling for both frameworks: dots, and Linen's ``name_3`` as ``name.3``."""
    return re.sub(r"_(\d+)(?=\.|/|$)", r".\1", path.replace("/", "."))


def _to_flax(layout: str, a: np.ndarray) -> np.ndarray:
    if layout == "conv":
        return a.transpose(*range(2, a.ndim), 1, 0)
    if layout == "conv_transpose":
        return np.flip(a, axis=tuple(range(2, a.ndim))).transpose(*range(2, a.ndim), 0, 1)
    if layout == "linear":
        return a.T
    return a


def _to_torch(layout: str, a: np.ndarray) -> np.ndarray:
    nd = a.ndim
    if layout == "conv":
        return a.transpose(nd - 1, nd - 2, *range(nd - 2))
    if layout == "conv_transpose":
        t = a.transpose(nd - 2, nd - 1, *range(nd - 2))
        return np.flip(t, axis=tuple(range(2, nd)))
    if layout == "linear":
        return a.T
    return a


@dataclass(frozen=True)
class Entry:
    """One torch tensor and the Flax leaf that holds it."""

    torch_key: str
    flax_key: tuple[str, ...]  # (collection, *module path, leaf)
    layout: str  # "conv" | "conv_transpose" | "linear" | "copy"


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _parse_flax_key(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(key) if isinstance(key, tuple) else tuple(re.split(r"[/.]", key))


class WeightMap:
    """The one-to-one correspondence between a torch module's state_dict and Flax variables.

    ``torch_shapes``: torch key -> shape; ``module_types``: torch module path -> type name;
    ``flax_shapes``: (collection, *path, leaf) -> shape; ``key_map``: torch key -> Flax key for what
    the rules do not place (a dict, or a function returning None where the rules should decide).
    """

    def __init__(self, torch_shapes: Mapping[str, tuple], module_types: Mapping[str, str],
                 flax_shapes: Mapping[tuple[str, ...], tuple],
                 key_map: Mapping[str, str] | Callable[[str], str | None] | None = None):
        by_norm = {}
        for fk in flax_shapes:
            by_norm.setdefault((fk[0], normalize(".".join(fk[1:]))), []).append(fk)
        lookup = key_map.get if isinstance(key_map, Mapping) else key_map
        entries, unmatched_torch, taken = [], [], set()
        for tk, shape in torch_shapes.items():
            mod, _, leaf = tk.rpartition(".")
            if leaf in TORCH_ONLY:  # mapped only where the Flax module keeps it too (a torch-style BatchNorm)
                found = by_norm.get(("batch_stats", normalize(f"{mod}.{leaf}" if mod else leaf)), [])
                if len(found) == 1:
                    taken.add(found[0])
                    entries.append(Entry(tk, found[0], "copy"))
                continue
            layout = "copy"
            explicit = lookup(tk) if lookup else None
            rule = RULES.get((module_types.get(mod, ""), leaf))
            if rule is not None:
                layout = rule[2]
            if explicit is not None:
                fk = _parse_flax_key(explicit)
                if fk not in flax_shapes:
                    unmatched_torch.append(f"{tk} {tuple(shape)} (mapped to {'/'.join(fk)}, which the Flax "
                                           "module does not have)")
                    continue
            else:
                coll, fleaf = (rule[0], rule[1]) if rule else ("params", leaf)
                found = by_norm.get((coll, normalize(f"{mod}.{fleaf}" if mod else fleaf)), [])
                if len(found) != 1:
                    unmatched_torch.append(f"{tk} {tuple(shape)}" + (f" (several Flax leaves: {found})"
                                                                     if found else ""))
                    continue
                fk = found[0]
            want = tuple(flax_shapes[fk])
            got = _to_flax(layout, np.empty(shape, dtype=np.uint8)).shape
            if got != want:
                unmatched_torch.append(f"{tk} {tuple(shape)} -> {'/'.join(fk)} {want}: shapes differ "
                                       f"(the {layout} rule gives {got})")
                continue
            taken.add(fk)
            entries.append(Entry(tk, fk, layout))
        unmatched_flax = [f"{'/'.join(fk)} {tuple(s)}" for fk, s in flax_shapes.items() if fk not in taken]
        if unmatched_torch or unmatched_flax:
            raise MappingError(
                "the torch and Flax weights do not correspond one to one; pass key_map={torch key: "
                "'collection/path/leaf'} for what the rules cannot place.\n"
                f"torch keys without a Flax leaf ({len(unmatched_torch)}):\n  "
                + "\n  ".join(unmatched_torch or ["-"])
                + f"\nFlax leaves without a torch key ({len(unmatched_flax)}):\n  "
                + "\n  ".join(unmatched_flax or ["-"]))
        self.entries = entries
        self.by_torch = {e.torch_key: e for e in entries}

    @property
    def param_keys(self) -> set[str]:
        return {e.torch_key for e in self.entries if e.flax_key[0] == "params"}

    def to_flax(self, state_dict: Mapping[str, np.ndarray]) -> dict:
        """Flax variables (nested dicts of numpy arrays) from torch-layout arrays."""
        return unflatten({e.flax_key: np.array(_to_flax(e.layout, np.asarray(state_dict[e.torch_key])), order="C")
                          for e in self.entries})

    def to_torch(self, variables: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
        """torch-layout arrays for every Flax leaf present in ``variables`` (e.g. params alone)."""
        flat = flatten(variables)
        return OrderedDict((e.torch_key, np.array(_to_torch(e.layout, np.asarray(flat[e.flax_key])), order="C"))
                           for e in self.entries if e.flax_key in flat)
