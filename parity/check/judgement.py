"""The two-step verdict on reduced runs (docs/parity.md): float64 structure, then working-dtype
precision against torch's float64 answer; and the first layer where the twins part."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from parity.check.config import Config
from parity.check.statistics import Reduced, rank_p
from parity.check.tolerances import STRUCT_RTOL, Tolerance

RANK_P = 0.01  # the rank test's significance level
RANK_MIN_SAMPLES = 5  # 5 against 5 is the smallest design that can reach p < 0.01 (1/252)
# torch's own working-dtype distance to float64 at or above this: not one correct decimal digit, so
# nothing can be judged against it (docs/parity.md, "When nothing is judged")
ILL_CONDITIONED = 0.1

QUANTITIES = ["eval", "train", "stats", "grads", "input_grad", "sgd_step1", "adamw_step1",
              "sgd_losses", "adamw_losses", "sgd_final", "adamw_final"]
# Quantities behind a derivative of ReLU or max-pool: a float32 run flips one of those derivatives
# whenever a float64 pre-activation lies within rounding of the kink, and the distance jumps.
GRADIENT_QUANTITIES = {"grads", "input_grad", "sgd_step1", "adamw_step1", "sgd_losses", "adamw_losses",
                       "sgd_final", "adamw_final"}

PASS, FAIL, NOT_JUDGED = "pass", "fail", "not judged"


class Precision(NamedTuple):
    status: str  # PASS, FAIL or NOT_JUDGED
    rule: str  # "median", "rank", or why nothing was judged


def precision_verdict(flax: Sequence[float], torch: Sequence[float], tol: Tolerance, gradient: bool) -> Precision:
    """The precision step on each framework's distances to torch's float64 answer (docs/parity.md).

    Forward quantities: Flax's median within ``tol`` of torch's. Gradient-derived ones (``gradient``)
    are bimodal (a ReLU derivative flips or not), so a one-sided rank test asks whether Flax is beyond
    the bound in nearly every pairing of runs; it needs ``RANK_MIN_SAMPLES`` on each side, and with
    fewer nothing is judged. Nor is anything judged where torch's own median distance is at least
    ``ILL_CONDITIONED``: the reference then has no correct digit to hold Flax to.
    """
    t_med = float(np.median(torch)) if len(torch) else math.nan
    if not t_med < ILL_CONDITIONED:
        if len(flax) and not all(map(math.isfinite, flax)) and math.isfinite(t_med):
            return Precision(FAIL, "median")  # Flax overflowed where torch did not
        return Precision(NOT_JUDGED, f"ill-conditioned: torch's own distance {fmt(t_med)} >= {ILL_CONDITIONED:g}")
    if gradient:
        n = min(len(flax), len(torch))
        if n < RANK_MIN_SAMPLES:
            return Precision(NOT_JUDGED, f"needs {RANK_MIN_SAMPLES} samples, ran {n}")
        return Precision(PASS if rank_p(flax, torch, tol) >= RANK_P else FAIL, "rank")
    return Precision(PASS if float(np.median(flax)) <= tol.factor * t_med + tol.floor else FAIL, "median")


@dataclass
class Verdict:
    quantity: str
    struct: float  # worst per-key float64 disagreement
    struct_key: str
    first_bad_key: str | None  # first key in torch order beyond its bound (locates the layer)
    torch_dist: float  # working dtype vs torch float64, median over the samples
    flax_dist: float
    structure: str  # PASS, FAIL or NOT_JUDGED (torch's own float64 one-ulp spread has no correct digit)
    precision: str  # PASS, FAIL or NOT_JUDGED (see precision_verdict)
    rule: str = "median"  # how precision was judged, or why it was not (see precision_verdict)
    torch_samples: list[float] = field(default_factory=list)  # every sample's distance
    flax_samples: list[float] = field(default_factory=list)

    @property
    def struct_ok(self) -> bool:
        return self.structure != FAIL

    @property
    def precision_ok(self) -> bool:
        return self.precision != FAIL

    @property
    def ok(self) -> bool:
        """Nothing judged failed (a quantity not judged fails nothing: see ``not_judged``)."""
        return self.struct_ok and self.precision_ok

    def not_judged(self) -> list[str]:
        """Why a step of this quantity gave no verdict, with the numbers."""
        out = []
        if self.structure == NOT_JUDGED:
            out.append(f"{self.quantity} structure: chaotic in float64 (torch's own one-ulp spread >= "
                       f"{ILL_CONDITIONED:g}); not judged")
        if self.precision == NOT_JUDGED:
            out.append(f"{self.quantity} precision: {self.rule}; not judged (torch {fmt(self.torch_dist)}, flax "
                       f"{fmt(self.flax_dist)} from float64)" + _hint(self.rule))
        return out


def _hint(rule: str) -> str:
    if rule.startswith("ill-conditioned"):
        return (": torch's own result has no correct digit (through BatchNorm, a larger batch or input conditions "
                "it better); the float64 structure step still judges it")
    if rule.startswith("needs"):
        return f": run samples >= {RANK_MIN_SAMPLES}"
    return ""


@dataclass
class Result:
    config: dict
    settings: dict
    verdicts: list[Verdict]
    layers: list[dict]  # name, struct, torch_dist, flax_dist, precision (PASS/FAIL/NOT_JUDGED), ok
    first_bad_layer: str | None
    counters_ok: bool

    findings: list = field(default_factory=list)  # parity.check.doctor's findings, for users' pairs
    cost: dict = field(default_factory=dict)  # wall time and peak memory, whole and per phase (parity.check.cost)

    @property
    def passed(self) -> bool:
        """Nothing judged failed. What was not judged is listed by ``not_judged`` (and in the report)."""
        return all(v.ok for v in self.verdicts) and self.counters_ok and self.first_bad_layer is None

    @property
    def complete(self) -> bool:
        """Every quantity and layer was judged in both steps."""
        return not self.not_judged()

    def not_judged(self) -> list[str]:
        """Each step that gave no verdict, why, with the numbers (docs/parity.md, "When nothing is judged")."""
        out = [n for v in self.verdicts for n in v.not_judged()]
        skipped = [la["name"] for la in self.layers if la.get("precision") == NOT_JUDGED]
        if skipped:
            out.append(f"{len(skipped)} layer(s) ill-conditioned in the working dtype (torch's own distance >= "
                       f"{ILL_CONDITIONED:g}), precision not judged: {', '.join(skipped[:5])}"
                       + (" ..." if len(skipped) > 5 else ""))
        return out

    def verdict(self) -> str:
        """PASS, PASS (N not judged) or FAIL."""
        if not self.passed:
            return "FAIL"
        n = len(self.not_judged())
        return f"PASS ({n} not judged)" if n else "PASS"

    def report(self) -> str:
        """The verdict table as ``parity check`` prints it, the first bad layer, what was not judged and
        the doctor's findings."""
        from parity import tables

        lines = [tables.text_table(detail_rows(self)), ""]
        lines.append(self.verdict() if self.passed else "FAIL: " + "; ".join(self.failures()))
        bad = next((la for la in self.layers if la["name"] == self.first_bad_layer), None)
        if bad:
            lines.append(f"first bad layer {bad['name']}: float64 structure {fmt(bad['struct'])} (bound "
                         f"{fmt(STRUCT_RTOL)}); working dtype vs float64: torch {fmt(bad['torch_dist'])}, "
                         f"flax {fmt(bad['flax_dist'])}")
        lines += [f"not judged: {n}" for n in self.not_judged()]
        if self.findings:
            lines += ["", "doctor:"] + [f"  {f}" for f in self.findings]
        if self.cost:
            from parity.check.cost import describe

            lines += ["", describe(self.cost)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()

    def failures(self) -> list[str]:
        out = [f"{v.quantity}: " + ("structure" if not v.struct_ok else "precision")
               + f" (worst {v.struct_key})" for v in self.verdicts if not v.ok]
        if not self.counters_ok:
            out.append("stats: num_batches_tracked differs")
        if self.first_bad_layer:
            out.append(f"first wrong layer: {self.first_bad_layer}")
        return out


def _spread(q: str, chaos: Sequence[Reduced]) -> float:
    """torch float64's own largest one-ulp spread in ``q`` (0 without chaos runs)."""
    return max((e for c in chaos if q in c.quantities for e in c.quantities[q].values()), default=0.0)


def _struct_bound(cfg: Config, q: str, chaos: Sequence[Reduced]) -> float:
    return max(STRUCT_RTOL, cfg.tolerance.factor * _spread(q, chaos))


def structure_ok(cfg: Config, struct: Reduced, chaos: Sequence[Reduced]) -> bool:
    """Whether every quantity passes the structure step (see ``judge``)."""
    return all(max(struct.quantities[q].values(), default=0.0) <= _struct_bound(cfg, q, chaos)
               for q in QUANTITIES if q in struct.quantities)


def layer_precision(flax: float, torch: float, tol: Tolerance) -> str:
    """One layer's activation, judged as a forward quantity (medians already taken)."""
    return precision_verdict([flax], [torch], tol, gradient=False).status


def judge(cfg: Config, ref_counters: dict, struct: Reduced, t_runs: list[Reduced], f_runs: list[Reduced],
          chaos: Sequence[Reduced] = ()) -> Result:
    """Structure on the float64 pair; precision on the working-dtype runs' distances (``precision_verdict``).

    ``chaos``: torch float64 runs from weights moved by one float64 ulp, reduced like ``struct``.
    Structure passes when the twins are no further apart than ``factor`` x torch's own largest
    one-ulp spread, or ``STRUCT_RTOL``, whichever is larger; where that spread itself has no correct
    digit (``ILL_CONDITIONED``) the quantity is chaotic in float64 and structure is not judged
    (docs/parity.md, "Structure")."""
    tol = cfg.tolerance

    def samples(runs: list[Reduced], q: str) -> list[float]:
        return [float(r.quantities[q]) for r in runs]

    verdicts = []
    for q in QUANTITIES:
        if q not in struct.quantities:
            continue
        errs = struct.quantities[q]
        worst = max(errs, key=errs.get) if errs else ""
        s = errs.get(worst, 0.0)
        ts, fs = samples(t_runs, q), samples(f_runs, q)
        bound = _struct_bound(cfg, q, chaos)
        first = next((k for k, e in errs.items() if not e <= bound), None)
        structure = NOT_JUDGED if not _spread(q, chaos) < ILL_CONDITIONED else PASS if s <= bound else FAIL
        first = first if structure == FAIL else None
        prec = precision_verdict(fs, ts, tol, q in GRADIENT_QUANTITIES)
        verdicts.append(Verdict(q, s, worst, first, float(np.median(ts)), float(np.median(fs)), structure,
                                prec.status, prec.rule, ts, fs))
    layers, first_bad = [], None
    for name, s in struct.layers.items():
        td = float(np.median([r.layers[name] for r in t_runs]))
        fd = float(np.median([r.layers[name] for r in f_runs]))
        prec = layer_precision(fd, td, tol)
        ok = s <= STRUCT_RTOL and prec != FAIL
        layers.append({"name": name, "struct": s, "torch_dist": td, "flax_dist": fd, "precision": prec, "ok": ok})
        if not ok and first_bad is None:
            first_bad = name
    # A wrong running statistic or gradient names its layer too (train-mode bugs leave eval intact).
    if first_bad is None:
        for v in verdicts:
            if v.first_bad_key and v.quantity in ("stats", "grads"):
                first_bad = v.first_bad_key.rsplit(".", 1)[0]
                break
    counters_ok = all(r.counters == ref_counters for r in [struct, *t_runs, *f_runs])
    return Result(dataclasses.asdict(cfg), {}, verdicts, layers, first_bad, counters_ok)


def fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1e}"


def detail_rows(r: Result) -> list[list[str]]:
    rows = [["quantity", "f64 struct (worst key)", "torch32 dist (median)", "flax32 dist (median)",
             "precision rule", "torch32 samples", "flax32 samples", "ok"]]
    for v in r.verdicts:
        ok = "NO" if not v.ok else "yes" if v.structure == v.precision == PASS else "not judged"
        rows.append([v.quantity, f"{fmt(v.struct)} ({v.struct_key})", fmt(v.torch_dist), fmt(v.flax_dist),
                     v.rule, " ".join(map(fmt, v.torch_samples)), " ".join(map(fmt, v.flax_samples)), ok])
    return rows
