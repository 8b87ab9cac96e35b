"""The data-parallel parities (docs/dataparallel.md): JAX global statistics = one device on the global
batch; JAX per-replica = torch DDP; torch DDP = one process normalising each shard; on GPU also torch
DDP with SyncBatchNorm = JAX global statistics; then the working dtype judged against float64 as the
single-device check judges quantities after a gradient step."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from parity import training
from parity.dataparallel.ddp import Run, torch_ddp, torch_replica_reference
from parity.dataparallel.meshes import jax_multiprocess, jax_train

QUANTITIES = ("step1", "final", "losses")


@dataclass
class Comparison:
    """One data-parallel parity: ``what`` against ``against``, per quantity."""

    what: str
    against: str
    kind: str  # "structure" (float64, bound STRUCT_RTOL) or "precision" (working dtype vs float64)
    errors: dict[str, float]  # quantity -> worst relative error (structure) or median distance (precision)
    bound: dict[str, float]
    status: dict[str, str] = field(default_factory=dict)  # precision: "pass", "fail" or "not judged"
    rule: dict[str, str] = field(default_factory=dict)  # precision: how each quantity was judged, or why not

    @property
    def ok(self) -> bool:
        """Nothing judged failed."""
        if self.kind == "precision":
            return all(s != "fail" for s in self.status.values())
        return all(e <= self.bound[q] for q, e in self.errors.items())

    def not_judged(self) -> list[str]:
        return [f"{self.what} {q}: {self.rule[q]}; not judged" for q, s in self.status.items() if s == "not judged"]


def check(name: str, devices: int = 2, batch: int = 4, size: int | None = None, steps: int = 10, seed: int = 0,
          timeout_s: float = 300.0, samples: int = 5, processes: int = 0, device: str = "cpu", dtype: str = "fp32",
          precision: str = "highest") -> list[Comparison]:
    """The data-parallel parities of ``name`` on ``devices`` devices of kind ``device``, ``batch`` images
    per device, each over ``steps`` SGD steps (step 1 and the end compared, and every step's loss):
    float64 structure, then ``dtype`` at ``precision`` of JAX per-replica against DDP's own distance to
    its float64 run, over ``samples`` starts (the exact weights, then one-ulp perturbations), with the
    tolerance of (device, dtype, precision), judged by the rank test (not judged with fewer than 5
    samples). With ``processes`` > 1, also JAX global statistics over that many ``jax.distributed``
    processes."""
    from parity.check import judgement, statistics
    from parity.check.config import Config
    from parity.check.tolerances import STRUCT_RTOL
    from parity.check.weights import initial_weights, make_batches, perturbed

    cfg = Config(name, batch=devices * batch, size=size, steps=steps, seed=seed, device=device, dtype=dtype,
                 precision=precision)
    w64 = initial_weights(cfg)
    batches = make_batches(cfg)
    opt = training.SGD(**cfg.sgd)
    tol = cfg.tolerance

    def structure(a: str, run_a: Run, b: str, run_b: Run) -> Comparison:
        errs = {q: max(statistics.struct_errors(run_a[q], run_b[q]).values()) for q in QUANTITIES}
        return Comparison(a, b, "structure", errs, dict.fromkeys(QUANTITIES, STRUCT_RTOL))

    def ddp(weights: OrderedDict, run_dtype: str, sync_bn: bool = False) -> Run:
        return torch_ddp(name, weights, batches, opt, run_dtype, devices, timeout_s, device,
                         precision if run_dtype != "fp64" else "highest", sync_bn)

    # each run is compared as soon as its reference exists and then dropped (a VGG's parameters and
    # statistics are 1 GB per run in float64)
    one = jax_train(name, w64, batches, opt, "fp64", "single", 1)
    out = [structure("jax global", jax_train(name, w64, batches, opt, "fp64", "global", devices), "jax one device",
                     one)]
    if device == "gpu":  # SyncBatchNorm raises on CPU tensors
        out.append(structure("torch DDP SyncBatchNorm", ddp(w64, "fp64", sync_bn=True), "jax one device", one))
    if processes > 1:
        what = f"jax.distributed global, {processes} processes"
        out.append(structure(what, jax_multiprocess(name, w64, batches, opt, "fp64", processes, "global", timeout_s),
                             "jax one device", one))
    del one
    ref = ddp(w64, "fp64")
    out.append(structure("jax per-replica", jax_train(name, w64, batches, opt, "fp64", "replica", devices),
                         "torch DDP", ref))
    out.append(structure("torch DDP", ref, "torch one process, shards",
                         torch_replica_reference(name, w64, batches, opt, "fp64", devices)))
    w32 = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in w64.items())
    del w64
    f_d: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    t_d: dict[str, list[float]] = {q: [] for q in QUANTITIES}

    def distances(into: dict[str, list[float]], run: Run) -> None:
        for q in QUANTITIES:
            into[q].append(statistics.distance(run[q], ref[q]))

    for i in range(samples):
        w = w32 if i == 0 else perturbed(w32, i)
        distances(f_d, jax_train(name, w, batches, opt, dtype, "replica", devices, precision))
        distances(t_d, ddp(w, dtype))
    # every quantity here follows a gradient step: the rank test (judgement.precision_verdict)
    verdicts = {q: judgement.precision_verdict(f_d[q], t_d[q], tol, gradient=True) for q in QUANTITIES}
    out.append(Comparison(f"jax per-replica {dtype}", "torch DDP fp64", "precision",
                          {q: float(np.median(f_d[q])) for q in QUANTITIES},
                          {q: tol.factor * float(np.median(t_d[q])) + tol.floor for q in QUANTITIES},
                          {q: v.status for q, v in verdicts.items()}, {q: v.rule for q, v in verdicts.items()}))
    return out
