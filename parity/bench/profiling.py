"""Where one step's time goes: the few operations that take most of it, per framework.

JAX: the step runs once under ``jax.profiler.trace``; XLA:CPU records one trace event per
executed HLO instruction (thunk), named as in the compiled module, so each event is matched to
its instruction's opcode and shape in ``compiled.as_text()``. An asynchronous thunk is timed to
its "end: <name>" event, and time during which several instructions run is shared among them.
torch: ``torch.profiler`` self CPU time per aten operator (or per fused kernel under torch.compile).

Shares are of the profiled step's wall time.
"""

from __future__ import annotations

import glob
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

DOMINANT = 0.5  # one operation above this share of a step is a pathology until explained


@dataclass
class Op:
    name: str  # HLO instruction or torch operator
    what: str  # opcode, shape and window (JAX) or call count (torch)
    ms: float
    share: float  # of the profiled step's wall time

    def line(self) -> str:
        return f"{100 * self.share:5.1f}%  {self.ms:8.2f} ms  {self.name}  {self.what}"


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$")


_HEAVY = ("convolution", "dot")  # what a fusion may hide: a library fusion can swallow them


def fused_ops(hlo_text: str) -> dict[str, tuple[str, dict[str, int]]]:
    """{fusion instruction: (its library, e.g. ``__ynn_fusion``, or "", {opcode: count} of the
    convolutions and dots in the computation it calls)} for every fusion of a compiled module."""
    bodies: dict[str, str] = {}  # computation name -> its text
    for block in re.split(r"\n\s*\n", hlo_text):
        m = re.match(r"\s*%([\w.\-]+) ", block)
        if m:
            bodies[m.group(1)] = block
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m or m.group(3) != "fusion":
            continue
        rest = m.group(4)
        library = re.search(r'"fusion_config":\{"kind":"(__\w+)"', rest)
        callee = re.search(r"calls=%([\w.\-]+)", rest)
        body = bodies.get(callee.group(1), "") if callee else ""
        out[m.group(1)] = (library.group(1) if library else "",
                           {op: n for op in _HEAVY if (n := len(re.findall(rf" {op}\(", body)))})
    return out


def hlo_instructions(hlo_text: str) -> dict[str, str]:
    """{instruction name: 'opcode shape [window]'} for every instruction of a compiled module. A
    fusion also names its library and the convolutions and dots inside it (``fused_ops``), so that
    a fusion which took convolutions shows it."""
    fusions = fused_ops(hlo_text)
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        window = re.search(r"window=\{([^}]*)\}", rest)
        kind = re.search(r"kind=(\w+)", rest)
        extra = f" window={{{window.group(1)}}}" if window else (f" {kind.group(1)}" if kind else "")
        if name in fusions:
            library, inside = fusions[name]
            extra += f" {library}" if library else ""
            extra += f" (inside: {', '.join(f'{n} {op}' for op, n in inside.items())})" if inside else ""
        out[name] = f"{opcode} {shape}{extra}"
    return out


def jax_ops(call: Callable[[], Any], hlo_text: str, top: int = 8) -> list[Op]:
    """Profile one call of a jitted step; the ``top`` instructions by total time."""
    import jax

    instructions = hlo_instructions(hlo_text)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            t = time.perf_counter()
            jax.block_until_ready(call())
            wall = time.perf_counter() - t
        files = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        if not files:
            raise RuntimeError(f"jax.profiler wrote no trace under {d}")
        data = jax.profiler.ProfileData.from_file(files[0])
    # An async thunk (an Eigen convolution) returns at once and marks its completion with an
    # "end: <name>" event, possibly on another thread: its time runs from start to that mark.
    starts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in instructions:
                    starts[ev.name].append((ev.start_ns, ev.start_ns + ev.duration_ns))
                elif ev.name.startswith("end: ") and ev.name[5:] in instructions:
                    ends[ev.name[5:]].append(ev.start_ns)
    spans: list[tuple[float, float, str]] = []
    for name, begins in starts.items():
        done = sorted(ends.get(name, []))
        for begin, stop in sorted(begins):
            later = [e for e in done if e >= begin]
            spans.append((begin, max(stop, later[0]) if later else stop, name))
            if later:
                done.remove(later[0])
    totals = {k: v / 1e9 for k, v in _shared_time(spans).items()}
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [Op(name, instructions[name], 1e3 * s, s / wall) for name, s in ranked]


def _shared_time(spans: list[tuple[float, float, str]]) -> dict[str, float]:
    """Each instant's time divided equally among the instructions running then: concurrent
    instructions (XLA:CPU runs independent ones at once) share it instead of each counting it."""
    edges = sorted({t for b, e, _ in spans for t in (b, e)})
    totals: dict[str, float] = defaultdict(float)
    events = sorted([(b, 1, n) for b, _, n in spans] + [(e, -1, n) for _, e, n in spans])
    active: dict[str, int] = defaultdict(int)
    i = 0
    for t0, t1 in zip(edges, edges[1:], strict=False):
        while i < len(events) and events[i][0] <= t0:
            active[events[i][2]] += events[i][1]
            i += 1
        running = [n for n, c in active.items() if c > 0]
        for n in running:
            totals[n] += (t1 - t0) / len(running)
    return totals


def torch_ops(call: Callable[[], Any], sync: Callable[[Any], None], top: int = 8) -> list[Op]:
    """Profile one call of a torch step (eager or compiled); the ``top`` operators by self time."""
    import torch

    with torch.profiler.profile(activities=_torch_activities()) as prof:
        t = time.perf_counter()
        sync(call())
        wall = time.perf_counter() - t
    events = prof.key_averages()
    self_time = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    ranked = sorted(events, key=lambda e: -getattr(e, self_time))[:top]
    return [Op(e.key, f"{e.count} calls", getattr(e, self_time) / 1e3, getattr(e, self_time) / 1e6 / wall)
            for e in ranked]


def _torch_activities() -> list:
    import torch

    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def warnings(framework: str, ops: list[Op]) -> list[str]:
    """A warning for each op that took more than DOMINANT of the step."""
    return [f"WARNING {framework}: one operation took {100 * op.share:.0f}% of the step: {op.name} ({op.what})"
            for op in ops if op.share > DOMINANT]


def as_dicts(ops: list[Op]) -> list[dict]:
    return [asdict(op) for op in ops]
