"""torch's float64 answer, the yardstick every other run of a check is measured against, held once.

Quantities stream in from the runner one at a time; every tensor of at least ``SPILL_BYTES`` goes to a
temporary directory the moment it arrives (a VGG's reference is five float64 copies of its 133M weights:
gradients, both optimizers' first step and final state), where the disk has room
(``DISK_RESERVE_BYTES``), and is read back for one comparison at a time (docs/parity.md, "What a check
holds"). The float64 start a check runs from is held the same way (``stored_start``).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

SPILL_BYTES = 1 << 16  # smaller tensors (biases, statistics, losses) stay in memory
# a tensor goes to disk only while this much stays free after it: the check must not fill a disk that
# other programs (and the check's own compilers) write to; where there is no room it stays in memory
DISK_RESERVE_BYTES = 1 << 30


class StoredTensors(Mapping):
    """One reference quantity: torch key -> float64 array (read from disk at each access when spilled),
    and ``scale``, max|x| over all its tensors (the structure step divides by it)."""

    def __init__(self) -> None:
        self._ram: dict[str, np.ndarray] = {}
        self._disk: dict[str, Path] = {}
        self._order: list[str] = []
        self.scale = 0.0
        self.held_in_memory = 0  # bytes that were to go to disk and found no room there
        self._sumsq: dict[str, float] = {}

    def add(self, key: str, value: np.ndarray, path: Path | None) -> None:
        """``value`` under ``key``; written to ``path`` (when given) if it has ``SPILL_BYTES`` or more and
        the disk keeps ``DISK_RESERVE_BYTES`` free after it, else held in memory (a copy: the runner's
        value is valid only until its next one). The same numbers either way: only where they live."""
        value = np.asarray(value)
        if value.size:  # max|x| without np.abs's temporary of the whole tensor
            self.scale = max(self.scale, float(np.maximum(value.max(), -value.min())))
        if np.issubdtype(value.dtype, np.floating):
            self._sumsq[key] = float(np.vdot(value, value))
        if path is not None and value.nbytes >= SPILL_BYTES:
            if _save(path, value):
                self._disk[key] = path
                self._order.append(key)
                return
            self.held_in_memory += value.nbytes
            value = np.array(value)
        self._ram[key] = value
        self._order.append(key)

    def sumsq(self, key: str) -> float:
        """sum(x**2) of one tensor, in float64, taken when it was stored (a distance divides by it)."""
        if key not in self._sumsq:
            x = np.asarray(self[key], np.float64)
            self._sumsq[key] = float(np.vdot(x, x))
        return self._sumsq[key]

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._ram:
            return self._ram[key]
        # mapped, not read: no copy through a second buffer, and its pages go when the array does
        return np.load(self._disk[key], mmap_mode="r", allow_pickle=False)

    def __contains__(self, key: object) -> bool:
        return key in self._ram or key in self._disk

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


def _save(path: Path, value: np.ndarray) -> bool:
    """``value`` written to ``path``, or False (nothing left behind) where the disk has no room for it
    and the reserve."""
    if shutil.disk_usage(path.parent).free < value.nbytes + DISK_RESERVE_BYTES:
        return False
    try:
        np.save(path, value, allow_pickle=False)
    except OSError as e:
        path.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or "free space" in str(e):  # numpy's own words for ENOSPC
            return False
        raise
    return True


class StoredStart(Mapping):
    """A float64 start (torch key -> tensor) held on disk for a whole check (``stored_start``): each access
    reads a fresh torch tensor, so the start is resident only while a module loads it. Holding it in
    memory was one more copy of the model beside every run's optimizer state."""

    def __init__(self, tensors: StoredTensors, ref: Reference) -> None:
        self._tensors, self._ref = tensors, ref

    @property
    def held_in_memory(self) -> int:
        return self._tensors.held_in_memory

    def __getitem__(self, key: str) -> Any:
        import torch

        return torch.from_numpy(np.array(self._tensors[key]))  # a copy: no mapping outlives the read

    def __contains__(self, key: object) -> bool:
        return key in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@contextlib.contextmanager
def stored_start(weights: Mapping[str, Any]) -> Iterator[StoredStart]:
    """``weights`` (torch tensors, on CPU) as a ``StoredStart`` in a temporary directory, removed when the
    block ends (also when it fails). The caller lets go of its own copy to gain the memory."""
    ref = Reference.collect([("start", {k: v.detach().numpy() for k, v in weights.items()})])
    del weights  # this frame lives as long as the block: it must not keep the caller's copy alive
    try:
        yield StoredStart(ref["start"], ref)
    finally:
        ref.close()


class Reference:
    """Every quantity of torch's float64 run (``collect``), as ``ref[quantity]`` (a ``StoredTensors``), with
    ``layers`` (each submodule's eval-mode output, forward order) and ``counters``
    (num_batches_tracked). ``close()`` (or leaving its ``with`` block) deletes what went to disk."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.quantities: dict[str, StoredTensors] = {}
        self.counters: dict[str, int] = {}
        self._files = 0

    @classmethod
    def collect(cls, stream: Iterable[tuple[str, Mapping[str, Any]]], spill: bool = True) -> Reference:
        """The run's quantities, each tensor stored as it comes (the runner's values are valid only
        until its next one). ``spill``: large tensors to a temporary directory (``tempfile``'s, so
        ``TMPDIR`` chooses the disk)."""
        ref = cls(Path(tempfile.mkdtemp(prefix="parity-reference-")) if spill else None)
        warned = False
        try:
            for q, value in stream:
                if q == "counters":
                    ref.counters = dict(value)
                    continue
                t = ref.quantities[q] = StoredTensors()
                for k in value:
                    try:
                        t.add(k, value[k], ref.directory / f"{ref._files}.npy" if ref.directory else None)
                        ref._files += 1
                        if t.held_in_memory and not warned:
                            warned = True
                            warnings.warn(f"the disk under {ref.directory} has less than "
                                          f"{DISK_RESERVE_BYTES / 2**30:.0f} GiB free beyond {q}/{k}: it stays in "
                                          "memory, as will each later tensor without room there (the same "
                                          "numbers, more memory); set TMPDIR to a disk with room (docs/parity.md, "
                                          "'What a check holds')", RuntimeWarning, stacklevel=2)
                    except OSError as e:
                        raise OSError(f"could not store the float64 reference of {q}/{k} under {ref.directory}: "
                                      f"{e}; set TMPDIR to another directory (docs/parity.md, "
                                      f"'What a check holds')") from e
        except BaseException:
            ref.close()
            raise
        return ref

    def __getitem__(self, q: str) -> StoredTensors:
        return self.quantities[q]

    def __contains__(self, q: object) -> bool:
        return q in self.quantities

    @property
    def held_in_memory(self) -> int:
        """Bytes that stayed in memory because the disk had no room (``DISK_RESERVE_BYTES``)."""
        return sum(t.held_in_memory for t in self.quantities.values())

    @property
    def layers(self) -> StoredTensors:
        return self.quantities.get("layers", StoredTensors())

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self.directory is not None:  # an interpreter shutting down may have dropped the modules
            shutil.rmtree(self.directory, ignore_errors=True)

