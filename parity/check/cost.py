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


# The estimate's constants, fitted (`python scripts/engine_bench.py --fit DIR/engine.json`) to the default
# checks of vgg11_bn, wide_resnet50_2 and resnet50 (time) and of those and an 81M transformer pair through
# check_pair (memory) on a 2-core x86 machine (docs/results.md, "What the parity engine costs"). Time per
# training step of one run: per training FLOP and per parameter tensor (the comparisons, the layout moves
# and the optimizers' steps go tensor by tensor).
SECONDS_PER_FLOP = {"fp64": 1.9e-10, "fp32": 1.0e-10}
SECONDS_PER_TENSOR = {"fp64": 7.7e-3, "fp32": 1.2e-3}
BASE_BYTES = 2.15 * 2**30  # imports, compiled programs, one batch's activations, the allocator's slack
PEAK_BYTES_PER_PARAM = 24.0  # above it, with or without trajectories (docs/parity.md, "What a check holds")


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: float  # resident, the process's base included

    def describe(self) -> str:
        return (f"estimate: about {self.seconds / 60:.0f} min, peak about {self.peak_bytes / 2.0**30:.1f} GiB "
                "resident (fitted to three twins and a pair of 26-133M parameters on a 2-core x86 machine; rough "
                "elsewhere: docs/parity.md, 'What a check costs')")


def estimate(params: int, step_flops: float, tensors: int, steps: int, samples: int) -> Estimate:
    """What a check should cost, before it runs: ``params`` parameters in ``tensors`` tensors,
    ``step_flops`` FLOPs of one training step on one batch, ``steps`` (0: no trajectories),
    ``samples``. Two torch float64 runs (the reference and one one-ulp start; a chaotic trajectory adds
    up to 7 more), one Flax float64 run and ``samples`` working-dtype runs on each side, each an eval
    pass and one step, or ``steps`` steps of both optimizers."""
    per_run = 2 * steps + 1 if steps else 2
    runs = {"fp64": 3, "fp32": 2 * samples}
    seconds = sum(n * per_run * (SECONDS_PER_FLOP[d] * step_flops + SECONDS_PER_TENSOR[d] * tensors)
                  for d, n in runs.items())
    return Estimate(seconds, BASE_BYTES + PEAK_BYTES_PER_PARAM * params)
