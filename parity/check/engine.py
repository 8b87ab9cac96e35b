"""The parity engine: ``run_pair`` under the twins' ``check`` and users' ``check_pair`` alike,
judged against float64 (docs/parity.md).

For one model, the same weights (through the converter) and the same inputs run through both
frameworks in float64, and ``samples`` times in the working dtype (exact weights, then 1-ulp
perturbations). Every quantity (eval output, train output, running statistics, gradients, SGD
and AdamW steps and trajectories, per-layer activations) is judged in two steps:

1. structure: per tensor, max|flax64 - torch64| / max|torch64 over the quantity| <= ``STRUCT_RTOL``
   (trajectories: or <= factor x torch64's own spread from a one-ulp start, see judgement.judge);
2. precision: each framework's distance ||x - ref||_2 / ||ref||_2 to torch's float64 answer over the
   samples. Forward quantities: Flax passes when its median is at most ``factor`` x torch's + ``floor``.
   Gradient-derived quantities: a one-sided exact rank test (judgement.precision_verdict).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from parity.check import pairs
from parity.check.config import Config
from parity.check.cost import Meter
from parity.check.judgement import Result, judge, structure_ok
from parity.check.pairs import Batch, Mode, Pair
from parity.check.reference import Reference, stored_start
from parity.check.runners import FUSED_OPTIMIZERS, flax_runner, run_torch
from parity.check.statistics import reduce
from parity.check.tolerances import STRUCT_RTOL
from parity.check.weights import Start, initial_weights, make_batches
from parity.convert.rules import KeyMap, WeightMap
from parity.precision import jax_precision, torch_precision

if TYPE_CHECKING:
    import torch

# one batch in torch's layout: a tensor or array, or a tuple of them
Inputs = Any


def run_pair(pair: Pair, cfg: Config, w64: Mapping[str, torch.Tensor], batches: list[Batch]) -> Result:
    """The engine under ``check`` and ``check_pair``: both sides of ``pair`` from the float64 weights
    ``w64`` in float64 (on CPU) and, ``cfg.samples`` times, in the working dtype; then the judgement.
    ``w64``: a state_dict, or a ``reference.StoredStart`` (``check`` and ``check_pair`` pass one: the start
    on disk, read at each load).

    Several working-dtype runs, from the same one-ulp-perturbed starts on both sides: one run is no
    yardstick where rounding is chaotic (docs/parity.md, "Two steps").
    """

    meter = Meter()
    with meter.phase("torch float64"), torch_precision("cpu", "highest"):
        t64 = Reference.collect(run_torch(pair, cfg, w64, batches, "fp64", "cpu"))
    with t64:
        return _judged(pair, cfg, w64, batches, meter, t64)


def _judged(pair: Pair, cfg: Config, w64: Mapping[str, torch.Tensor], batches: list[Batch], meter: Meter,
            t64: Reference) -> Result:
    """``run_pair`` from torch's float64 answer ``t64`` on: every other run, reduced against it as it
    streams, and the judgement."""

    # the working-dtype starts: exact weights, then one-ulp moves (seeded: the same on both sides)
    starts = [Start(w64, None if i == 0 else i, fp32=True) for i in range(cfg.samples)]
    with meter.phase("torch float64, one-ulp start"), torch_precision("cpu", "highest"):
        chaos = [reduce(run_torch(pair, cfg, Start(w64, 0), batches, "fp64", "cpu"), t64, "struct")]
    with meter.phase("flax float64"), jax_precision("highest", True):
        struct = reduce(flax_runner(pair, cfg, "fp64", "cpu")(w64, batches), t64, "struct")
    # more float64 runs from one-ulp starts only while a quantity fails the bound they widen (a
    # chaotic trajectory), up to ``chaos_samples`` (docs/parity.md, "Two steps")
    with meter.phase("torch float64, more one-ulp starts"):
        while cfg.trajectories and len(chaos) < cfg.chaos_samples and not structure_ok(cfg, struct, chaos):
            with torch_precision("cpu", "highest"):
                chaos.append(reduce(run_torch(pair, cfg, Start(w64, len(chaos)), batches, "fp64", "cpu"), t64,
                                    "struct"))
    with meter.phase(f"torch {cfg.dtype} x{cfg.samples}"), torch_precision(cfg.device, cfg.precision) as ts:
        t_runs = [reduce(run_torch(pair, cfg, w, batches, cfg.dtype, cfg.device), t64, "distance") for w in starts]
    with meter.phase(f"flax {cfg.dtype} x{cfg.samples}"), jax_precision(cfg.precision, False) as js:
        run = flax_runner(pair, cfg, cfg.dtype, cfg.device)
        f_runs = [reduce(run(w, batches), t64, "distance") for w in starts]
    with meter.phase("judgement"):
        result = judge(cfg, t64.counters, struct, t_runs, f_runs, chaos)
    result.cost = meter.record()
    result.settings = {**ts, **js, "float64 reference": "cpu", "steps": cfg.steps, "samples": cfg.samples,
                       "chaos runs": len(chaos), "tolerance": dataclasses.asdict(cfg.tolerance),
                       "struct_rtol": STRUCT_RTOL,
                       "flax execution": "jax.jit" if cfg.jits else "op by op (no jax.jit: docs/parity.md, Cost tiers)",
                       "float64 reference held": _held(t64, w64),
                       "torch optimizers": "fused (one pass per tensor)" if FUSED_OPTIMIZERS else "torch's default",
                       "torch huge pages": _torch_huge_pages(), "malloc huge pages": _malloc_huge_pages()}
    return result


def _held(t64: Reference, w64: Mapping[str, Any]) -> str:
    """Where the float64 reference and start were kept (docs/parity.md, "What a check holds")."""
    ram = t64.held_in_memory + getattr(w64, "held_in_memory", 0)
    return "on disk (TMPDIR)" + (f", {ram / 2**30:.2f} GiB in memory: the disk had no room for it" if ram else "")


def _torch_huge_pages() -> str:
    import os

    on = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") not in ("", "0")
    return "on (THP_MEM_ALLOC_ENABLE)" if on else "off (parity check sets THP_MEM_ALLOC_ENABLE=1: faster, same numbers)"


def _malloc_huge_pages() -> str:
    import os

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=1" in tunables:
        return "on (GLIBC_TUNABLES glibc.malloc.hugetlb=1: XLA's and numpy's buffers)"
    return "off (parity check sets GLIBC_TUNABLES=glibc.malloc.hugetlb=1 where glibc has it: faster, same numbers)"


def twin_run(cfg: Config) -> tuple[Pair, Config, OrderedDict, list[Batch]]:
    """What ``run_pair`` takes for the twins of ``cfg.name``: the pair, ``cfg``, the float64 weights
    and the batches."""
    return pairs.twin(cfg), cfg, initial_weights(cfg), [((x,), y) for x, y in make_batches(cfg)]


def check(cfg: Config | str, **config: Any) -> Result:
    """The built-in twins of ``cfg.name`` (or ``check("resnet20", steps=2)``: a name and ``Config``'s
    fields): torchnets' seeded weights with BatchNorm randomized (or calibrated,
    ``parity.check.weights``), ``cfg.steps`` random batches."""
    if isinstance(cfg, str):
        cfg = Config(cfg, **config)
    elif config:
        raise TypeError(f"check(Config, ...) takes no other arguments, got {sorted(config)}")
    pair, cfg, w64, batches = twin_run(cfg)
    with stored_start(w64) as start:
        del w64  # on disk from here: one copy of the model less in every phase
        result = run_pair(pair, cfg, start, batches)
    result.settings.update({"dropout": "switched off (p=0): the frameworks cannot draw the same masks",
                            "batchnorm statistics": "calibrated on a separate batch, affine within 10%"
                            if cfg.calibrates else "random"})
    return result


def _numpy_inputs(inputs: Inputs) -> tuple[np.ndarray, ...]:
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    out = []
    for i, a in enumerate(args):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"input {i}: expected a float or integer array or tensor, got dtype {a.dtype}")
        out.append(a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a)
    return tuple(out)


def check_pair(torch_module: torch.nn.Module, flax_module: Any, inputs: Inputs, *, steps: int = 0,
               samples: int = 5, dtype: str = "fp32", device: str = "cpu", precision: str = "highest",
               key_map: KeyMap | None = None, images: bool = True, mode: Mode | None = None,
               randomize: bool = True, seed: int = 0, sgd: dict | None = None, adamw: dict | None = None,
               weight_map: WeightMap | None = None, layer_layouts: Mapping[str, tuple[int, ...]] | None = None
               ) -> Result:
    """Parity of a user's torch module and Flax module (Linen or NNX), judged as the twins are
    (docs/parity.md).

    ``flax_module``: a ``flax.linen.Module`` or a ``flax.nnx.Module``. ``inputs``: one batch (a tensor
    or array, or a tuple of them, in torch's layout); 4-D and 5-D float inputs move channels-last for
    Flax unless ``images=False``. Weights come from ``torch_module`` (1-D weights, biases and running
    statistics redrawn at random unless ``randomize=False``: ones and zeros hide swaps) and move to
    Flax by ``parity.convert.rules``, or ``key_map``, or a ``weight_map`` made for this pair (a port's).
    ``layer_layouts``: torch module path -> the Flax axis of each torch dimension of that module's output,
    where known (a port's); elsewhere activations are matched by shape, images channels-last.
    ``mode(train)`` gives the Flax call's mode arguments (default: read from its signature).
    Gradients come from a probe loss, sum(output x a fixed random tensor). ``steps`` > 0 adds an
    AdamW step and trajectories of both optimizers over that many steps (on the same batch).
    ``parity.check.doctor``'s findings are in ``result.findings`` and its report.
    """
    import torch

    from parity.check import doctor, weights
    from parity.convert.rules import MappingError

    torch_module, flax_module = pairs.sides(torch_module, flax_module)
    cfg = Config(None, steps=steps, samples=samples, dtype=dtype, device=device, precision=precision, seed=seed,
                 **({"sgd": sgd} if sgd else {}), **({"adamw": adamw} if adamw else {}))
    arrays = _numpy_inputs(inputs)
    ref = copy.deepcopy(torch_module).cpu().double()
    targs = tuple(torch.from_numpy(a) for a in arrays)
    out = pairs.torch_eval(ref, targs)
    flax_args = pairs.flax_args(arrays, images)
    try:
        with jax_precision(precision, False):
            findings = doctor.diagnose(ref, flax_module, targs, flax_args, mode or pairs.flax_mode(flax_module),
                                       images)
    except Exception as e:  # the doctor only advises: a module it cannot read is still checked
        findings = [doctor.Finding("global", "doctor", f"could not inspect the modules: {type(e).__name__}: {e}")]
    del ref  # a float64 copy of the model: not held through the check
    try:
        pair = pairs.modules(torch_module, flax_module, arrays, key_map=key_map, images=images, mode=mode,
                             weight_map=weight_map, layer_layouts=layer_layouts)
    except MappingError as e:
        raise MappingError(str(e) + "".join(f"\ndoctor: {f}" for f in findings)) from None
    w64 = OrderedDict((k, v.detach().cpu().double() if v.is_floating_point() else v.detach().cpu())
                      for k, v in torch_module.state_dict().items())
    if randomize:
        w64 = weights.randomize(w64, seed)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    rng = np.random.default_rng(seed)
    targets = tuple(rng.standard_normal(tuple(o.shape)) / np.sqrt(max(o.numel(), 1)) for o in outs)
    batches = [(arrays, targets if len(targets) > 1 else targets[0])] * max(steps, 1)
    with stored_start(w64) as start:
        del w64  # on disk from here: one copy of the model less in every phase
        result = run_pair(pair, cfg, start, batches)
    result.findings = findings
    result.settings.update({"loss": "probe: sum(output x fixed random tensor)",
                            "inputs": "4-D/5-D float inputs channels-last" if images else "as given",
                            "weights": "the torch module's, 1-D weights and statistics redrawn" if randomize
                            else "the torch module's"})
    return result
