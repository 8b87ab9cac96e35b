"""The port's view of one value in the emitted code: its expression, torch's example shape, and where
each torch dimension lives in the Flax array (its layout), with the rules that move between layouts
(docs/port.md, "Layouts")."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

_NONE = object()


@dataclasses.dataclass(frozen=True)
class V:
    """A value: ``expr`` in the emitted code. Tensors have torch's ``shape`` and ``perm`` (the Flax axis
    of each torch dimension; the identity when both orders agree). Python values known at trace time
    have ``py``; a shape is ``dims``, one expression per torch dimension. ``kernel``: a raw parameter
    held in the weight map's layout (its rule), usable only by the functional layer it feeds."""

    expr: str
    shape: tuple[int, ...] | None = None
    perm: tuple[int, ...] | None = None
    integer: bool = False
    py: object = _NONE
    dims: tuple[str, ...] | None = None
    items: tuple[V, ...] | None = None  # a tuple or list of values (chunk, split, a module's outputs)
    kernel: str = ""

    @property
    def tensor(self) -> bool:
        return self.shape is not None

    @property
    def known(self) -> bool:
        return self.py is not _NONE

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def flax_shape(self) -> tuple[int, ...]:
        inv = inverse(self.perm)
        return tuple(self.shape[inv[b]] for b in range(self.ndim))


def const(value: object) -> V:
    return V(repr(value), py=value)


def identity(n: int) -> tuple[int, ...]:
    return tuple(range(n))


def channels_last(n: int) -> tuple[int, ...]:
    """torch's (N, C, *spatial) held as (N, *spatial, C): the Flax axis of each torch dimension."""
    return identity(n) if n < 3 else (0, n - 1, *range(1, n - 1))


def inverse(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for d, a in enumerate(perm):
        inv[a] = d
    return tuple(inv)


def canonical(shape: Sequence[int], integer: bool) -> tuple[int, ...]:
    """The layout of a value crossing a module boundary: float images and volumes channels-last (as
    ``check_pair`` feeds and compares them), everything else in torch's order."""
    return channels_last(len(shape)) if not integer and len(shape) in (4, 5) else identity(len(shape))


def axes_to(v: V, perm: Sequence[int]) -> tuple[int, ...] | None:
    """The ``jnp.transpose`` axes that move ``v`` to ``perm``; None when it is there already."""
    perm = tuple(perm)
    if v.perm == perm:
        return None
    inv = inverse(perm)
    return tuple(v.perm[inv[b]] for b in range(len(perm)))


def renumber(kept: Sequence[int]) -> tuple[int, ...]:
    """Flax axes of the dimensions that remain, renumbered 0.. in their order."""
    order = sorted(kept)
    return tuple(order.index(a) for a in kept)


def reshape_groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive groups of source and target dimensions whose products agree (size-1 dimensions are
    left out), or None when the reshape is no merge and split of consecutive dimensions."""
    s = [i for i, n in enumerate(src) if n != 1]
    d = [j for j, n in enumerate(dst) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(s) and j < len(d):
        gi, gj = [s[i]], [d[j]]
        pi, pj = src[s[i]], dst[d[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(s):
                gi.append(s[i])
                pi *= src[s[i]]
                i += 1
            elif pj < pi and j < len(d):
                gj.append(d[j])
                pj *= dst[d[j]]
                j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups if i == len(s) and j == len(d) else None
