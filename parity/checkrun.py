"""``python -m parity check``: run compare.check over models, print and write the reports."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
from pathlib import Path

from parity import compare, report

SUMMARY = ["eval", "train", "stats", "grads", "sgd_final", "adamw_final"]


def very_deep(name: str) -> bool:
    """Nets whose Flax side runs op by op (``compare.jits``). Each optimizer step there takes about
    20 s for resnet1202 at batch 2, so its two 10-step trajectories (six Flax runs) took its check
    from 5 min to 57 min. Unless ``--steps`` is given, they get eval, train, stats, gradients and
    layers (structure checks suffice there), with the usual samples."""
    return not compare.jits(compare.Config(name))


def steps_for(name: str, args: argparse.Namespace) -> int:
    """``--steps`` when given; otherwise compare.Config's default (10), or 0 for the nets run op by op."""
    if args.steps is not None:
        return args.steps
    return 0 if very_deep(name) else compare.Config.steps


def config_for(name: str, args: argparse.Namespace) -> compare.Config:
    return compare.Config(name, batch=args.batch, size=args.size, steps=steps_for(name, args),
                          device=args.device, dtype=args.dtype, precision=args.precision, samples=args.samples)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1e}"


def summary_rows(results: dict[str, compare.Result]) -> list[list[str]]:
    head = ["model", "f64 struct"] + [f"{q} t/f" for q in SUMMARY] + ["verdict", "first wrong layer"]
    rows = [head]
    for name, r in results.items():
        by_q = {v.quantity: v for v in r.verdicts}
        cells = [name, _fmt(max(v.struct for v in r.verdicts))]
        for q in SUMMARY:
            v = by_q.get(q)
            cells.append(f"{_fmt(v.torch_dist)}/{_fmt(v.flax_dist)}" if v else "-")
        cells += ["PASS" if r.ok else "FAIL", r.first_bad_layer or "-"]
        rows.append(cells)
    return rows


def detail_rows(r: compare.Result) -> list[list[str]]:
    rows = [["quantity", "f64 struct (worst key)", "torch32 dist (median)", "flax32 dist (median)",
             "precision rule", "torch32 samples", "flax32 samples", "ok"]]
    for v in r.verdicts:
        rows.append([v.quantity, f"{_fmt(v.struct)} ({v.struct_key})", _fmt(v.torch_dist), _fmt(v.flax_dist),
                     v.rule, " ".join(map(_fmt, v.torch_samples)), " ".join(map(_fmt, v.flax_samples)),
                     "yes" if v.ok else "NO"])
    return rows


def plot_layers(name: str, r: compare.Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def main(names: list[str], args: argparse.Namespace) -> int:
    from tqdm import tqdm

    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, compare.Result] = {}
    bar = tqdm(names, desc="parity", unit="model", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        r = compare.check(config_for(name, args))
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
          f"gradient-derived ones by a rank test over >= {compare.RANK_MIN_SAMPLES} samples "
          f"(p < {compare.RANK_P}; see report.md)\n")
    print(report.text_table(rows))
    failed = [n for n, r in results.items() if not r.ok]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    env = environment()
    (out / "report.json").write_text(json.dumps({
        "environment": env, "settings": settings,
        "results": {n: {"ok": r.ok, "failures": r.failures(), "config": r.config, "settings": own[n],
                        "verdicts": [dataclasses.asdict(v) for v in r.verdicts],
                        "first_bad_layer": r.first_bad_layer, "layers": r.layers}
                    for n, r in results.items()}}, indent=1, default=str))
    md = [f"# Parity report ({args.device}, {args.dtype}, precision {args.precision})", "",
          f"Environment: {env}", "", f"Settings: {settings}", "", report.markdown_table(rows), ""]
    for n, r in results.items():
        md += [f"## {n}", ""] + ([f"Settings: {own[n]}", ""] if own[n] else [])
        md += [report.markdown_table(detail_rows(r)), "", f"![{n} layers]({n}_layers.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    print(f"reports: {out}/report.json, report.md, <model>_layers.png")
    return 1 if failed else 0
