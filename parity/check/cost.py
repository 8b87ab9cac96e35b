"""What a parity check costs: each phase's wall time and peak resident memory (``Meter``, in every
``Result.cost``), so that users can plan a check of a larger model.

A phase's peak is the process's resident high-water mark over that phase alone: Linux resets it on
``echo 5 > /proc/self/clear_refs``; elsewhere the lifetime peak (``ru_maxrss``) stands in, and the
record says so (``per_phase_peak``).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field_name: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident memory now (0 where the platform does not say)."""
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else 0


def peak_bytes() -> int:
    """The resident high-water mark since the last ``reset_peak`` (or since the start)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return 1024 * kib
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else 1024 * peak  # macOS reports bytes, Linux KiB


def reset_peak() -> bool:
    """Reset the high-water mark to the current resident size; False where the platform cannot."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Phase:
    name: str
    seconds: float
    peak_bytes: int  # resident high-water mark during the phase (the process's, all it holds)


@dataclass
class Meter:
    """Times and peaks of a check's phases, in order. ``base_bytes``: resident size when it started."""

    base_bytes: int = field(default_factory=rss_bytes)
    phases: list[Phase] = field(default_factory=list)
    per_phase_peak: bool = True
    _start: float = field(default_factory=time.perf_counter, repr=False)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.per_phase_peak = reset_peak() and self.per_phase_peak
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append(Phase(name, time.perf_counter() - t, peak_bytes()))

    def record(self) -> dict:
        """What ``Result.cost`` holds: the whole check's wall time and peak, its base, each phase."""
        return {"seconds": time.perf_counter() - self._start,
                "peak_bytes": max((p.peak_bytes for p in self.phases), default=peak_bytes()),
                "base_bytes": self.base_bytes, "per_phase_peak": self.per_phase_peak,
                "phases": [asdict(p) for p in self.phases]}


def describe(cost: dict) -> str:
    """One line: the whole check's time and peak, then each phase's."""
    if not cost:
        return "cost: not measured"
    gib = 2.0**30
    parts = ", ".join(f"{p['name']} {p['seconds']:.1f} s / {p['peak_bytes'] / gib:.2f} GiB" for p in cost["phases"])
    return (f"cost: {cost['seconds']:.1f} s, peak {cost['peak_bytes'] / gib:.2f} GiB resident "
            f"(process base {cost['base_bytes'] / gib:.2f} GiB"
            + ("" if cost.get("per_phase_peak", True) else "; phase peaks are the process's lifetime peak")
            + f"); phases: {parts}")
