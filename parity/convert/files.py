"""Checkpoint files: safetensors (default), torch .pt/.pth state_dicts, Flax msgpack, and Orbax
checkpoint directories of Flax variables (``parity.convert.orbax_dirs``).

Nothing is ever unpickled beyond tensors (``torch.load(weights_only=True)``, no fallback);
every unreadable file raises :class:`CheckpointError`; every write is atomic, so a failed
save leaves the previous file byte-identical.
"""

from __future__ import annotations

import io as _io
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flax import traverse_util

from parity.convert import arrays

__all__ = ["save", "load", "CheckpointError", "FORMATS", "flatten", "unflatten", "nonfinite_keys", "is_state_dict"]

FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".msgpack": "msgpack"}
FORMAT_NAMES = ("safetensors", "torch", "msgpack", "orbax")  # orbax: a directory, not an extension
_KIND_KEY = "parity.kind"  # safetensors metadata: "torch" (state_dict) or "flax" (nested tree)
_ORDER_KEY = "parity.keys"  # safetensors sorts its table; the original key order is kept here


# what a checkpoint holds: a torch state_dict (str -> Tensor), or Flax variables (nested dicts of arrays)
Checkpoint = OrderedDict[str, torch.Tensor] | dict[str, Any]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written as asked (never a partial result)."""


def format_of(path: Path, fmt: str | None = None) -> str:
    """The format a checkpoint at ``path`` is read or written in: ``fmt`` if given, Orbax for a
    directory, else by extension (``CheckpointError`` naming the known ones)."""
    if fmt is not None:
        if fmt not in FORMAT_NAMES:
            raise CheckpointError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMAT_NAMES)}")
        return fmt
    if path.is_dir():
        return "orbax"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CheckpointError(f"{path}: unknown checkpoint extension {path.suffix!r}; "
                              f"expected one of {', '.join(FORMATS)}, or an Orbax checkpoint directory "
                              "(format 'orbax', --format orbax)")
    return fmt


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{'params': {'fc': {'kernel': a}}} -> {'params/fc/kernel': a} (flax's tree utility; a key that
    holds the separator is refused: it would not read back as the same tree)."""
    flat = traverse_util.flatten_dict(tree) if tree else {}
    bad = sorted({str(p) for path in flat for p in path if sep in str(p)})
    if bad:
        raise CheckpointError(f"tree key {bad[0]!r} contains the separator {sep!r}")
    return {sep.join(map(str, path)): v for path, v in flat.items()}


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep=sep) if flat else {}


def is_state_dict(obj: object) -> bool:
    """A torch state_dict: a mapping whose values are all tensors (else: Flax variables)."""
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _kind(obj: object) -> str:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"expected a non-empty state_dict or Flax variables dict, got {type(obj).__name__}")
    if is_state_dict(obj):
        return "torch"
    for k, v in flatten(obj).items():
        if not (isinstance(v, np.ndarray) or hasattr(v, "__array__") and hasattr(v, "dtype")):
            raise CheckpointError(f"leaf {k!r} is a {type(v).__name__}, expected an array or tensor")
    return "flax"


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, flush + fsync, os.replace, fsync the folder."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _serialize(obj: Mapping[str, Any], kind: str, fmt: str) -> bytes:
    if fmt == "safetensors":
        from safetensors.torch import save as st_save

        flat = dict(obj) if kind == "torch" else flatten(obj)
        tensors = {k: (v.detach().cpu().contiguous().clone() if isinstance(v, torch.Tensor)
                       else arrays.to_torch(v)) for k, v in flat.items()}
        return st_save(tensors, metadata={_KIND_KEY: kind, _ORDER_KEY: json.dumps(list(tensors))})
    if fmt == "torch":
        if kind != "torch":
            raise CheckpointError("a .pt/.pth file holds a torch state_dict; save Flax variables as "
                                  ".safetensors or .msgpack (or convert them with parity.convert first)")
        buf = _io.BytesIO()
        torch.save(OrderedDict((k, v.detach().cpu()) for k, v in obj.items()), buf)
        return buf.getvalue()
    if kind != "flax":
        raise CheckpointError("a .msgpack file holds Flax variables; save a torch state_dict as "
                              ".safetensors or .pt")
    from flax import serialization

    return serialization.msgpack_serialize(
        unflatten({k: np.asarray(v) for k, v in flatten(obj).items()}))


def save(path: str | os.PathLike, obj: Mapping[str, Any], fmt: str | None = None) -> None:
    """Write a torch state_dict or Flax variables, replacing ``path`` atomically; the format follows
    the extension unless ``fmt`` (one of ``FORMAT_NAMES``) names it. ``"orbax"`` writes Flax variables
    as an Orbax checkpoint directory."""
    path = Path(path)
    kind, fmt = _kind(obj), format_of(path, fmt)
    if fmt == "orbax":
        from parity.convert import orbax_dirs

        if kind != "flax":
            raise CheckpointError("an Orbax checkpoint holds Flax variables; save a torch state_dict as "
                                  ".safetensors or .pt (or convert it with parity.convert first)")
        orbax_dirs.save(path, obj, force=True)
        return
    data = _serialize(obj, kind, fmt)
    _atomic_write(path, data)


def load(path: str | os.PathLike, allow_nonfinite: bool = False) -> Checkpoint:
    """Read what :func:`save` wrote (or a torchvision-style file, or an Orbax checkpoint directory
    from any Orbax code): a state_dict of tensors, or Flax variables as nested dicts of numpy arrays.
    NaN/Inf weights raise, naming the keys, unless ``allow_nonfinite``."""
    path = Path(path)
    if path.is_dir() or not path.suffix and not path.exists():
        from parity.convert import orbax_dirs

        return orbax_dirs.variables(path, allow_nonfinite)
    fmt = format_of(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        obj = {"safetensors": _load_safetensors, "torch": _load_torch, "msgpack": _load_msgpack}[fmt](path)
    except CheckpointError:
        raise
    except Exception as e:  # every parser failure (truncation, garbage, hostile pickle) is ours
        raise CheckpointError(f"{path}: not a readable {fmt} checkpoint ({type(e).__name__}: {e})") from e
    if not allow_nonfinite:
        bad = nonfinite_keys(obj)
        if bad:
            raise CheckpointError(f"{path}: NaN or Inf in {len(bad)} tensor(s): {', '.join(bad)} "
                                  "(load(..., allow_nonfinite=True) to read it anyway)")
    return obj


def nonfinite_keys(obj: Mapping[str, Any]) -> list[str]:
    """Keys (flat, '/'-joined for trees) whose floating values contain NaN or Inf."""
    flat = dict(obj) if is_state_dict(obj) else flatten(obj)
    bad = []
    for k, v in flat.items():
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                bad.append(k)
        elif np.asarray(v).dtype.kind == "f" or str(np.asarray(v).dtype) == "bfloat16":
            if not np.isfinite(np.asarray(v, dtype=np.float64)).all():
                bad.append(k)
    return bad


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
        order = json.loads(meta.get(_ORDER_KEY, "null"))
        if isinstance(order, list) and sorted(order) == sorted(keys):
            keys = order
        tensors = OrderedDict((k, f.get_tensor(k)) for k in keys)
    kind = meta.get(_KIND_KEY)
    if kind is None:  # a file from elsewhere: a '/'-joined tree or a torch state_dict
        kind = "flax" if tensors and all("/" in k for k in tensors) else "torch"
    if kind == "torch":
        return tensors
    if kind != "flax":
        raise CheckpointError(f"{path}: unknown {_KIND_KEY} {kind!r} in metadata")
    return unflatten({k: arrays.to_numpy(v) for k, v in tensors.items()})


def _load_torch(path: Path) -> OrderedDict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # the common {'state_dict': ..., 'epoch': ...} training checkpoint
    if not is_state_dict(obj) or not obj:
        raise CheckpointError(f"{path}: expected a state_dict (str -> Tensor), got {type(obj).__name__}"
                              + (" with non-tensor values" if isinstance(obj, Mapping) else ""))
    return OrderedDict(obj)


def _load_msgpack(path: Path) -> dict:
    from flax import serialization

    tree = serialization.msgpack_restore(path.read_bytes())
    if not isinstance(tree, dict) or not tree:
        raise CheckpointError(f"{path}: expected a dict of Flax variables, got {type(tree).__name__}")
    for k, v in flatten(tree).items():
        if not isinstance(v, np.ndarray):
            raise CheckpointError(f"{path}: leaf {k!r} is a {type(v).__name__}, not an array")
    return tree
