"""``parity check``: the twins' parity, judged against float64 (docs/parity.md), and its reports.

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

import argparse
import copy
import dataclasses
import json
import platform
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from parity import pairs, report
from parity.config import STRUCT_RTOL, Config
from parity.judgement import ILL_CONDITIONED, RANK_MIN_SAMPLES, RANK_P, Result, detail_rows, fmt, judge, structure_ok
from parity.pairs import Batch, Pair
from parity.runners import Quantities, flax_runner, jax_precision, run_torch, torch_precision
from parity.statistics import reduce
from parity.weights import initial_weights, make_batches, perturbed


def run_pair(pair: Pair, cfg: Config, w64: Mapping[str, Any], batches: list[Batch]) -> Result:
    """The engine under ``check`` and ``check_pair``: both sides of ``pair`` from the float64 weights
    ``w64`` in float64 (on CPU) and, ``cfg.samples`` times, in the working dtype; then the judgement.

    Why several working-dtype runs: a train-mode trajectory through batch statistics is chaotic
    in float32 (torch's own distance to float64 moves 100x when its weights move by one ulp), so
    one run is no yardstick; the medians over the same perturbed starts are.
    """

    def starts() -> Iterator[OrderedDict]:
        # made one at a time, twice (seeded, so the same): held together, wide_resnet101_2's five
        # float32 copies took 2.5 GB through the float64 phase, and that check ran out of 24 GB
        w32 = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in w64.items())
        yield w32
        for i in range(1, cfg.samples):
            yield perturbed(w32, i)

    with torch_precision("cpu", "highest"):
        t64 = Quantities.collect(run_torch(pair, cfg, w64, batches, "fp64", "cpu"))
        chaos = [reduce(run_torch(pair, cfg, perturbed(w64, 0), batches, "fp64", "cpu"), t64, "struct")]
    with jax_precision("highest", True):
        struct = reduce(flax_runner(pair, cfg, "fp64", "cpu")(w64, batches), t64, "struct")
    # Trajectories of deep plain nets are chaotic even in float64 (plain34: one ulp grows to 1e-2 in
    # 10 AdamW steps), and one perturbed run can underestimate that spread. More runs only widen the
    # bound, so they are made only while a trajectory fails it, up to ``chaos_samples``. A porting
    # bug still fails: it moves a one-step quantity by 1e-3 or more (judgement.judge), far beyond
    # torch's own one-ulp spread there.
    while cfg.trajectories and len(chaos) < cfg.chaos_samples and not structure_ok(cfg, struct, chaos):
        with torch_precision("cpu", "highest"):
            chaos.append(reduce(run_torch(pair, cfg, perturbed(w64, len(chaos)), batches, "fp64", "cpu"), t64,
                                "struct"))
    with torch_precision(cfg.device, cfg.precision) as ts:
        t_runs = [reduce(run_torch(pair, cfg, w, batches, cfg.dtype, cfg.device), t64, "distance") for w in starts()]
    with jax_precision(cfg.precision, False) as js:
        run = flax_runner(pair, cfg, cfg.dtype, cfg.device)
        f_runs = [reduce(run(w, batches), t64, "distance") for w in starts()]
    result = judge(cfg, t64.counters, struct, t_runs, f_runs, chaos)
    result.settings = {**ts, **js, "float64 reference": "cpu", "steps": cfg.steps, "samples": cfg.samples,
                       "chaos runs": len(chaos), "tolerance": dataclasses.asdict(cfg.tolerance),
                       "struct_rtol": STRUCT_RTOL,
                       "flax execution": "jax.jit" if cfg.jits else "op by op (no jax.jit: see parity.tiers)"}
    return result


def check(cfg: Config) -> Result:
    """The built-in twins of ``cfg.name``: torchnets' seeded weights with BatchNorm randomized (or
    calibrated, parity.weights), ``cfg.steps`` random batches."""
    result = run_pair(pairs.twin(cfg), cfg, initial_weights(cfg), [((x,), y) for x, y in make_batches(cfg)])
    result.settings.update({"dropout": "switched off (p=0): the frameworks cannot draw the same masks",
                            "batchnorm statistics": "calibrated on a separate batch, affine within 10%"
                            if cfg.calibrates else "random"})
    return result


def _numpy_inputs(inputs: Any) -> tuple[np.ndarray, ...]:
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    out = []
    for i, a in enumerate(args):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"input {i}: expected a float or integer array or tensor, got dtype {a.dtype}")
        out.append(a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a)
    return tuple(out)


def check_pair(torch_module: Any, flax_module: Any, inputs: Any, *, steps: int = 0, samples: int = 5,
               dtype: str = "fp32", device: str = "cpu", precision: str = "highest",
               key_map: Mapping[str, str] | Callable[[str], str | None] | None = None, images: bool = True,
               mode: Callable[[bool], dict] | None = None, randomize: bool = True, seed: int = 0,
               sgd: dict | None = None, adamw: dict | None = None) -> Result:
    """Parity of a user's torch module and Flax module (Linen or NNX), judged as the twins are
    (docs/parity.md).

    ``inputs``: one batch (a tensor or array, or a tuple of them, in torch's layout); 4-D float
    inputs move to NHWC for Flax unless ``images=False``. Weights come from ``torch_module``
    (1-D weights, biases and running statistics redrawn at random unless ``randomize=False``: ones
    and zeros hide swaps) and move to Flax by ``parity.mapping``'s rules, or ``key_map``.
    ``mode(train)`` gives the Flax call's mode arguments (default: read from its signature).
    Gradients come from a probe loss, sum(output x a fixed random tensor). ``steps`` > 0 adds an
    AdamW step and trajectories of both optimizers over that many steps (on the same batch).
    ``parity.doctor``'s findings are in ``result.findings`` and its report.
    """
    import flax.linen as fnn
    import torch

    from parity import doctor, mapping, nnx, weights

    if nnx.is_nnx(flax_module):
        flax_module = nnx.LinenView(flax_module)
    if not isinstance(flax_module, (fnn.Module, nnx.LinenView)):
        raise TypeError(f"the Flax side must be a flax.linen.Module or a flax.nnx.Module, got "
                        f"{type(flax_module).__name__}")
    cfg = Config(None, steps=steps, samples=samples, dtype=dtype, device=device, precision=precision, seed=seed,
                 **({"sgd": sgd} if sgd else {}), **({"adamw": adamw} if adamw else {}))
    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"the torch side must be a torch.nn.Module, got {type(torch_module).__name__}")
    arrays = _numpy_inputs(inputs)
    ref = copy.deepcopy(torch_module).cpu().double()
    targs = tuple(torch.from_numpy(a) for a in arrays)
    try:
        with torch.no_grad():
            out = ref.eval()(*targs)
    except Exception as e:
        raise ValueError(f"the torch module rejects inputs of shapes {[tuple(a.shape) for a in arrays]}: "
                         f"{type(e).__name__}: {e}") from e
    flax_args = pairs.flax_args(arrays, images)
    try:
        with jax_precision(precision, False):
            findings = doctor.diagnose(ref, flax_module, targs, flax_args, mode or pairs.flax_mode(flax_module),
                                       images)
    except Exception as e:  # the doctor only advises: a module it cannot read is still checked
        findings = [doctor.Finding("global", "doctor", f"could not inspect the modules: {type(e).__name__}: {e}")]
    try:
        pair = pairs.modules(torch_module, flax_module, arrays, key_map=key_map, images=images, mode=mode)
    except mapping.MappingError as e:
        raise mapping.MappingError(str(e) + "".join(f"\ndoctor: {f}" for f in findings)) from None
    w64 = OrderedDict((k, v.detach().cpu().double() if v.is_floating_point() else v.detach().cpu())
                      for k, v in torch_module.state_dict().items())
    if randomize:
        w64 = weights.randomize(w64, seed)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    rng = np.random.default_rng(seed)
    targets = tuple(rng.standard_normal(tuple(o.shape)) / np.sqrt(max(o.numel(), 1)) for o in outs)
    batches = [(arrays, targets if len(targets) > 1 else targets[0])] * max(steps, 1)
    result = run_pair(pair, cfg, w64, batches)
    result.findings = findings
    result.settings.update({"loss": "probe: sum(output x fixed random tensor)",
                            "inputs": "4-D float inputs NCHW -> NHWC" if images else "as given",
                            "weights": "the torch module's, 1-D weights and statistics redrawn" if randomize
                            else "the torch module's"})
    return result


# --------------------------------------------------------------------------- the command

DEFAULT_MODELS = ("resnet20", "plain20", "resnet18")
SUMMARY = ["eval", "train", "stats", "grads", "sgd_final", "adamw_final"]


def steps_for(name: str, args: argparse.Namespace) -> int:
    """``--steps`` when given; otherwise Config's default (10), or 0 for very deep nets (parity.tiers):
    their Flax side runs op by op, about 20 s per optimizer step for resnet1202 at batch 2, so two
    10-step trajectories took its check from 5 to 57 min; structure checks suffice there."""
    if args.steps is not None:
        return args.steps
    return 0 if not Config(name).jits else Config.steps


def config_for(name: str, args: argparse.Namespace) -> Config:
    return Config(name, batch=args.batch, size=args.size, steps=steps_for(name, args),
                          device=args.device, dtype=args.dtype, precision=args.precision, samples=args.samples)


def summary_rows(results: dict[str, Result]) -> list[list[str]]:
    head = ["model", "f64 struct"] + [f"{q} t/f" for q in SUMMARY] + ["verdict", "first wrong layer"]
    rows = [head]
    for name, r in results.items():
        by_q = {v.quantity: v for v in r.verdicts}
        cells = [name, fmt(max(v.struct for v in r.verdicts))]
        for q in SUMMARY:
            v = by_q.get(q)
            cells.append(f"{fmt(v.torch_dist)}/{fmt(v.flax_dist)}" if v else "-")
        cells += [r.verdict(), r.first_bad_layer or "-"]
        rows.append(cells)
    return rows


def plot_layers(name: str, r: Result, path: Path) -> None:
    plt = report.pyplot()
    xs = range(len(r.layers))
    fig, ax = plt.subplots(figsize=(max(6, len(r.layers) * 0.12), 3.5))
    floor = 1e-18
    ax.semilogy(xs, [max(la["torch_dist"], floor) for la in r.layers], label="torch (working dtype) vs float64")
    ax.semilogy(xs, [max(la["flax_dist"], floor) for la in r.layers], label="flax (working dtype) vs float64")
    ax.semilogy(xs, [max(la["struct"], floor) for la in r.layers], label="flax64 vs torch64", alpha=0.7)
    if r.first_bad_layer in [la["name"] for la in r.layers]:
        i = [la["name"] for la in r.layers].index(r.first_bad_layer)
        ax.axvline(i, color="red", ls="--", label=f"first wrong: {r.first_bad_layer}")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("relative distance")
    ax.set_title(f"{name}: per-layer eval-mode activation error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment() -> dict:
    import jax
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__,
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "jax_devices": [str(d) for d in jax.devices()],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def models(args: argparse.Namespace) -> list[str]:
    """The variants the command names (``--models`` or ``--all``), unknown names refused."""
    from parity import specs

    names = specs.list_models() if getattr(args, "all", False) else [
        m.strip() for m in ",".join(args.models).split(",") if m.strip()]
    unknown = [n for n in names if n not in specs.list_models()]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; valid: {', '.join(specs.list_models())}")
    return names


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    names = models(args)
    if getattr(args, "devices", 1) > 1:
        from parity import dataparallel

        return dataparallel.run(names, args)

    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Result] = {}
    bar = tqdm(names, desc="parity", unit="model", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        r = check(config_for(name, args))
        results[name] = r
        plot_layers(name, r, out / f"{name}_layers.png")
        if not r.ok:
            tqdm.write(f"{name}: FAIL - " + "; ".join(r.failures()), file=sys.stderr)
    # settings every model shared; the rest (steps, BatchNorm statistics, jit) are listed per model
    first = next(iter(results.values())).settings if results else {}
    settings = {k: v for k, v in first.items() if all(r.settings.get(k) == v for r in results.values())}
    own = {n: {k: v for k, v in r.settings.items() if k not in settings} for n, r in results.items()}
    rows = summary_rows(results)
    print(f"\nparity: device={args.device} dtype={args.dtype} precision={args.precision} "
          f"batch={args.batch} samples={args.samples}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    for n, o in own.items():
        if o:
            print(f"settings for {n}: " + ", ".join(f"{k}={v}" for k, v in o.items()))
    print("columns: float64 structural disagreement; then 'torch/flax' = median distance of each framework's "
          "working-dtype result to torch's float64 result. Precision: forward quantities by medians, "
          f"gradient-derived ones by a rank test over >= {RANK_MIN_SAMPLES} samples "
          f"(p < {RANK_P}); not judged where fewer samples ran or torch's own distance is >= {ILL_CONDITIONED:g} "
          "(see report.md)\n")
    print(report.text_table(rows))
    for n, r in results.items():
        for line in r.not_judged():
            print(f"{n}: not judged: {line}")
    failed = [n for n, r in results.items() if not r.ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    env = environment()
    (out / "report.json").write_text(json.dumps({
        "environment": env, "settings": settings,
        "results": {n: {"ok": r.ok, "failures": r.failures(), "not_judged": r.not_judged(), "config": r.config,
                        "settings": own[n],
                        "verdicts": [dataclasses.asdict(v) for v in r.verdicts],
                        "first_bad_layer": r.first_bad_layer, "layers": r.layers}
                    for n, r in results.items()}}, indent=1, default=str))
    md = [f"# Parity report ({args.device}, {args.dtype}, precision {args.precision})", "",
          f"Environment: {env}", "", f"Settings: {settings}", "", report.markdown_table(rows), ""]
    for n, r in results.items():
        md += [f"## {n}", ""] + ([f"Settings: {own[n]}", ""] if own[n] else [])
        md += [report.markdown_table(detail_rows(r)), ""] + [f"- not judged: {x}" for x in r.not_judged()]
        md += ["", f"![{n} layers]({n}_layers.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    print(f"reports: {out}/report.json, report.md, <model>_layers.png")
    return 1 if failed else 0
