"""Orbax checkpoint directories, the format Flax's documentation saves in: Flax variables
(``{'params', 'batch_stats'}``) or a whole training state (``parity.training.FlaxState``), written by
``orbax.checkpoint.StandardCheckpointer`` and read back against an abstract tree (``jax.eval_shape``).

Orbax writes into ``<name>.orbax-checkpoint-tmp-<timestamp>`` and renames it when the save is
finished, so a killed save never leaves a directory under the final name. Replacing an existing
checkpoint (``force``) saves beside it first and swaps the two only then: the previous checkpoint is
whole until the new one is. Every problem of a directory (missing pieces, keys, shapes, dtypes) is
reported in one :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from parity.convert.files import CheckpointError, nonfinite_keys

__all__ = ["save", "load", "variables", "shapes", "item_dir"]

_TMP = ".orbax-checkpoint-tmp"  # Orbax's suffix of a save in progress (or killed)
_TREE_METADATA = "_METADATA"  # a PyTree item's tree: present once its arrays are written
_STEP_METADATA = "_CHECKPOINT_METADATA"  # a finished save's own record (a step or a single item)


def _items(step: Path) -> list[Path]:
    return sorted(p for p in step.iterdir() if p.is_dir() and (p / _TREE_METADATA).is_file())


def _unfinished(path: Path) -> list[str]:
    """Orbax's temporary directories of a save to ``path`` beside it (``save``'s replacement, a
    ``NAME.parity-new-PID``, included)."""
    name = glob.escape(path.name)
    return sorted({p.name for pattern in (name + _TMP + "*", name + ".*" + _TMP + "*")
                   for p in path.parent.glob(pattern)})


def item_dir(path: str | os.PathLike) -> Path:
    """The PyTree item directory that ``path`` names: the directory itself (``StandardCheckpointer``),
    or the one item of an ``ocp.CheckpointManager`` step directory (``step/default`` or
    ``step/<name>``). A manager's root, an unfinished save or a foreign directory is refused, saying
    which."""
    path = Path(path)
    if not path.exists():
        unfinished = _unfinished(path)
        raise CheckpointError(f"{path}: no such checkpoint directory"
                              + (f" (an unfinished save of it is beside it: {', '.join(unfinished)})"
                                 if unfinished else ""))
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (an Orbax checkpoint is a directory)")
    if _TMP in path.name:
        raise CheckpointError(f"{path}: an unfinished Orbax save (its name ends in {_TMP}-...; Orbax renames the "
                              "directory only once every array is written); nothing in it is a checkpoint")
    if (path / _TREE_METADATA).is_file():
        return path
    items = _items(path) if (path / _STEP_METADATA).is_file() else []  # a manager's step records its save
    if len(items) == 1:
        return items[0]
    if len(items) > 1:
        names = [p.name for p in items]
        if "default" in names:
            return path / "default"
        raise CheckpointError(f"{path}: a checkpoint step with {len(items)} items ({', '.join(names)}); "
                              "name the one to read, e.g. " + str(items[0]))
    steps = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and _items(p)),
                   key=lambda p: int(p.name))
    if steps:
        raise CheckpointError(f"{path}: an ocp.CheckpointManager directory with steps "
                              f"{', '.join(p.name for p in steps)}; name one step, e.g. {steps[-1]}")
    unfinished = _unfinished(path)
    inside = [p.name for p in _items(path)]
    found = sorted(p.name for p in path.iterdir())[:8]
    raise CheckpointError(f"{path}: not an Orbax checkpoint: no {_TREE_METADATA} file and no checkpoint step "
                          f"({_STEP_METADATA}) (found: {', '.join(found) or 'nothing'})"
                          + (f"; it holds the checkpoint(s) {', '.join(inside)}: name one" if inside else "")
                          + (f"; an unfinished save of it is beside it: {', '.join(unfinished)}" if unfinished else ""))


def _key(entry: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey (NamedTuple fields), SequenceKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(tree: Any) -> dict[str, Any]:
    """'/'-joined key paths -> leaves (a NamedTuple's fields by name, a list's items by index, the
    same keys Orbax's metadata tree gives)."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves if leaf is not None}


@contextlib.contextmanager
def _checkpointer() -> Iterator[Any]:
    """An Orbax StandardCheckpointer, closed after use (it runs its own threads and event loop)."""
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        yield ckptr
    finally:
        ckptr.close()


def _metadata_tree(path: Path) -> Any:
    with _checkpointer() as ckptr:
        md = ckptr.metadata(path)
    md = getattr(md, "item_metadata", md)  # orbax >= 0.11: StepMetadata(item_metadata=TreeMetadata(tree=...))
    return getattr(md, "tree", md)


def shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """'/'-joined key -> (shape, dtype name) from the checkpoint's metadata, without reading an array."""
    item = item_dir(path)
    try:
        tree = _metadata_tree(item)
    except Exception as e:
        raise CheckpointError(f"{item}: unreadable Orbax metadata ({type(e).__name__}: {e})") from e
    flat = _flat(tree) if tree is not None else {}
    if not flat:  # Orbax answers a damaged item's metadata with nothing (and a logged warning)
        missing = _missing_pieces(item)
        raise CheckpointError(f"{item}: not a readable Orbax checkpoint: its metadata lists no arrays"
                              + (f" (missing: {', '.join(missing)})" if missing else ""))
    return {k: (tuple(int(d) for d in m.shape), str(np.dtype(m.dtype))) for k, m in flat.items()}


def _compare(item: Path, have: Mapping[str, tuple], like: Any) -> None:
    want = {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in _flat(like).items()}
    problems = [f"missing: {k} {want[k][0]} {want[k][1]}" for k in want if k not in have]
    problems += [f"unexpected: {k} {have[k][0]} {have[k][1]}" for k in have if k not in want]
    problems += [f"{k}: the checkpoint holds {have[k][0]} {have[k][1]}, expected {want[k][0]} {want[k][1]}"
                 for k in want if k in have and have[k] != want[k]]
    if problems:
        raise CheckpointError(f"{item}: does not fit the expected tree ({len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems))


def _missing_pieces(item: Path) -> list[str]:
    """What an item directory Orbax wrote holds besides its metadata: its data files (OCDBT
    manifest and the ``d/`` folder). Named when a restore fails on a truncated copy."""
    if not (item / "manifest.ocdbt").exists() and not any(item.glob("ocdbt.process_*")):
        return []  # not an OCDBT item (an older or zarr layout): nothing to name
    want = ["manifest.ocdbt", "d"] + [str(p.relative_to(item) / n) for p in item.glob("ocdbt.process_*")
                                      for n in ("manifest.ocdbt", "d")]
    return [w for w in want if not (item / w).exists() or (item / w).is_dir() and not any((item / w).iterdir())]


def load(path: str | os.PathLike, like: Any = None, allow_nonfinite: bool = False) -> Any:
    """The tree in an Orbax checkpoint directory, as numpy arrays. ``like`` (arrays or
    ``jax.ShapeDtypeStruct``s, e.g. ``jax.eval_shape`` of the model's init or of
    ``training.flax_state``) fixes the structure, shapes and dtypes: the checkpoint must match it
    exactly (every difference is named) and comes back in its structure (a ``FlaxState`` as one).
    Without it, the saved structure as nested dicts and lists."""
    import jax

    item = item_dir(path)
    have = shapes(item)
    if like is not None:
        _compare(item, have, like)
        target = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    try:
        with _checkpointer() as ckptr:
            tree = ckptr.restore(item, target) if like is not None else ckptr.restore(item)
    except Exception as e:
        missing = _missing_pieces(item)
        raise CheckpointError(f"{item}: not a readable Orbax checkpoint"
                              + (f" (missing: {', '.join(missing)})" if missing else "")
                              + f" ({type(e).__name__}: {str(e)[:500]})") from e
    tree = jax.tree_util.tree_map(np.asarray, tree)
    if not allow_nonfinite:
        bad = [k for k, v in _flat(tree).items() if nonfinite_keys({"a": v})]
        if bad:
            raise CheckpointError(f"{item}: NaN or Inf in {len(bad)} array(s): {', '.join(bad)} "
                                  "(allow_nonfinite=True to read it anyway)")
    return tree


def save(path: str | os.PathLike, tree: Any, force: bool = False) -> None:
    """Write ``tree`` (Flax variables, a ``FlaxState``, any tree of arrays) as an Orbax checkpoint
    directory. An existing one is replaced only with ``force``, and only once the new one is whole."""
    import jax

    path = Path(path).absolute()
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise CheckpointError("nothing to save: the tree has no arrays")
    bad = [k for k, v in _flat(tree).items() if not hasattr(v, "shape") or not hasattr(v, "dtype")]
    if bad:
        raise CheckpointError(f"leaves that are not arrays: {', '.join(bad[:8])}")
    if path.exists() and not force:
        raise CheckpointError(f"{path} exists; pass force=True (--force) to replace it")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory; an Orbax checkpoint is one")
    path.parent.mkdir(parents=True, exist_ok=True)
    replace = path.exists()
    # Orbax writes through its own tmp-dir-and-rename; a replacement goes to a fresh name beside
    fresh = path.with_name(f"{path.name}.parity-new-{os.getpid()}") if replace else path
    if replace:
        shutil.rmtree(fresh, ignore_errors=True)  # what a killed replacement of this process id left
    try:
        with _checkpointer() as ckptr:
            ckptr.save(fresh, tree)
            ckptr.wait_until_finished()
    except BaseException:
        if replace:
            shutil.rmtree(fresh, ignore_errors=True)
        raise
    if not replace:
        return
    old = path.with_name(f"{path.name}.parity-old-{os.getpid()}")
    os.rename(path, old)  # the previous checkpoint, whole, under this name for one rename's time
    os.rename(fresh, path)
    shutil.rmtree(old)


VARIABLES = ("params", "batch_stats")  # the Flax collections a conversion reads


def variables(path: str | os.PathLike, allow_nonfinite: bool = False) -> dict:
    """The Flax variables in a checkpoint: its ``params`` and ``batch_stats``, whether it holds only
    them or a training state (``FlaxState``, flax's ``TrainState``) whose step and optimizer state
    stay in it (``others`` names them)."""
    have = shapes(path)
    tops = sorted({k.split("/")[0] for k in have})
    if "params" not in tops:
        raise CheckpointError(f"{item_dir(path)}: no 'params' in the checkpoint (its top-level keys: "
                              f"{', '.join(tops)}); expected Flax variables or a training state holding them")
    tree = load(path, allow_nonfinite=allow_nonfinite)
    return {k: tree[k] for k in VARIABLES if k in tree and tree[k]}


def others(path: str | os.PathLike) -> list[str]:
    """The top-level entries of a checkpoint besides its Flax variables (a training state's
    ``opt_state``, ``step``): what a conversion leaves behind."""
    return sorted({k.split("/")[0] for k in shapes(path)} - set(VARIABLES))
