"""Distances between one run's quantities and torch's float64 answer, and the rank test that
compares two frameworks' samples of them (docs/parity.md)."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.check import reference
from parity.check.tolerances import Tolerance


def _minus(a: np.ndarray, ref: np.ndarray, scratch: bool) -> np.ndarray:
    """a - ref in float64, written over ``a`` where it is a runner's fresh copy (``scratch``): VGG's
    first classifier weight is 822 MB in float64, and each temporary is one more."""
    if scratch and isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.writeable:
        return np.subtract(a, ref, out=a)
    return np.subtract(a, ref, dtype=np.float64)


# a parameter-sized tensor is compared in blocks of rows of about this size (float64): two blocks held,
# not two whole tensors, and no layout move of a whole tensor (runners.LiveTensors.rows)
BLOCK_BYTES = 1 << 24


def _pieces(a: Mapping[str, np.ndarray], k: str, ref: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(a's part, ref's part) of key ``k``: row blocks where ``a`` reads them (``rows``) and the tensor
    is larger than a block, else the whole tensor once."""
    n = ref.shape[0] if ref.ndim else 0
    if n > 1 and ref.nbytes > BLOCK_BYTES and hasattr(a, "rows"):
        step = max(1, BLOCK_BYTES // (ref.nbytes // n))
        first = a.rows(k, 0, min(step, n))
        if first is not None and first.shape == ref[:step].shape:
            yield first, ref[:step]
            for s in range(step, n, step):
                yield a.rows(k, s, min(s + step, n)), ref[s:s + step]
            return
    yield a[k], ref


def _rel(a: np.ndarray, ref: np.ndarray, scale: float, scratch: bool = False) -> float:
    if np.shape(a) != np.shape(ref):
        return float("inf")
    d = _minus(a, ref, scratch)
    np.abs(d, out=d)
    return float(d.max() / scale) if d.size else 0.0


def _rel_key(a: Mapping[str, np.ndarray], k: str, ref: np.ndarray, scale: float, scratch: bool) -> float:
    """max|a[k] - ref| / scale, read in row blocks where ``a`` can (the max of the blocks' maxima)."""
    return max(_rel(x, r, scale, scratch) for x, r in _pieces(a, k, ref))


def _scale(ref: Mapping[str, np.ndarray]) -> float:
    if isinstance(ref, reference.StoredTensors):  # a stored reference knows its scale without reading it again
        return ref.scale or 1e-300
    return max((float(np.abs(v).max()) for v in ref.values() if v.size), default=0.0) or 1e-300


def _fresh(a: Mapping[str, np.ndarray]) -> bool:
    return getattr(a, "fresh", False)


def struct_errors(a: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> OrderedDict[str, float]:
    """Per key: max|a_key - ref_key| / max|ref| (the whole quantity's scale); a missing key is inf.

    The quantity's scale, not the key's: a gradient that is mathematically zero (a conv bias
    feeding a BatchNorm) is float64 noise, and AdamW divides it by its own size.
    """
    scale, scratch = _scale(ref), _fresh(a)
    return OrderedDict((k, _rel_key(a, k, np.asarray(r), scale, scratch) if k in a else float("inf"))
                       for k, r in ref.items())


def distance(a: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> float:
    """||a - ref||_2 / ||ref||_2 over the whole quantity (all its tensors together).

    The 2-norm, not the max: in float32 a few elements sit at a chaotic edge (a ReLU or an
    Adam sign(g) of a gradient that is noise), and the max would judge the frameworks by them.
    """
    num = den = 0.0
    scratch = _fresh(a)
    for k, r in ref.items():
        if k not in a:
            return float("inf")
        r = np.asarray(r, np.float64)
        for x, rp in _pieces(a, k, r):  # each part read once: a runner's tensor is made at each access
            if np.shape(x) != np.shape(rp):
                return float("inf")
            d = _minus(x, rp, scratch)
            # vdot, not sum(square()): one temporary less
            num += float(np.vdot(d, d))
        den += _sumsq(ref, k, r)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def _sumsq(ref: Mapping[str, np.ndarray], k: str, r: np.ndarray) -> float:
    """sum(r**2): a stored reference's, kept from when it was stored (one read of it less per run)."""
    if isinstance(ref, reference.StoredTensors):
        return ref.sumsq(k)
    return float(np.vdot(r, r))


@dataclass
class Reduced:
    """One run's quantities reduced against torch's float64 run.

    kind "struct" (a float64 run): per quantity, per key relative errors (``struct_errors``); per
    layer, max error over that layer's own scale. kind "distance" (a working-dtype sample): per
    quantity and per layer, one ``distance``. Counters (num_batches_tracked) are kept as they are.
    """

    kind: str
    quantities: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def reduce(stream: Iterable[tuple[str, Any]], ref: Mapping[str, Any], kind: str) -> Reduced:
    """``stream``'s quantities (a runner's output) reduced against ``ref`` (torch's float64 run), one
    at a time as they come: a VGG's quantities in float64 are several GB, and the suite must fit
    a 24 GB machine."""
    if kind not in ("struct", "distance"):
        raise ValueError(f"kind must be 'struct' or 'distance', got {kind!r}")
    out = Reduced(kind)
    for q, value in stream:
        if q == "counters":
            out.counters = value
        elif q == "layers" and kind == "struct":
            out.layers = OrderedDict((n, _rel(value[n], r, max(float(np.abs(r).max()), 1e-300)))
                                     for n, r in ref["layers"].items() if n in value)
        elif q == "layers":
            out.layers = {n: distance(value, {n: r}) for n, r in ref["layers"].items()}
        else:
            out.quantities[q] = struct_errors(value, ref[q]) if kind == "struct" else distance(value, ref[q])
    return out


@functools.cache
def _u_count(u: int, n: int, m: int) -> int:
    """Orderings of n + m values with exactly u (first-group, second-group) pairs in order."""
    if u < 0:
        return 0
    if n == 0 or m == 0:
        return int(u == 0)
    # the largest value is from the first group (0 pairs) or the second (n pairs)
    return _u_count(u, n - 1, m) + _u_count(u - n, n, m - 1)


def rank_p(flax: list[float], torch: list[float], tol: Tolerance) -> float:
    """One-sided exact Mann-Whitney p-value of "Flax is further than factor x torch + floor": the
    chance, were both equally precise, of at most this few pairs with Flax within the bound."""
    u = sum(f <= tol.factor * t + tol.floor for f in flax for t in torch)
    n, m = len(flax), len(torch)
    return sum(_u_count(k, n, m) for k in range(u + 1)) / math.comb(n + m, n)
