"""The parity engine's own cost: wall time and peak resident memory of the default check of some
twins and of ``check_pair`` on a transformer-shaped pair (tests/helpers.py), each in a fresh process
(the model alone in it), with every phase's figures (parity.check.cost).

    python scripts/engine_bench.py --models resnet50,vgg11_bn,wide_resnet50_2 --transformer 81M --out DIR

Writes DIR/engine.json and DIR/engine.md (the table docs/results.md quotes). Run it alone on the
machine: a second job beside it changes both figures. ``--fit DIR/engine.json`` prints the estimate's
constants (parity.check.cost) refitted to those rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name -> transformer_pair arguments (vocab, dim, depth, heads, length, num_classes)
TRANSFORMERS = {"81M": (16000, 768, 8, 12, 64, 16000), "13M": (8000, 384, 6, 6, 64, 8000),
                "tiny": (50, 32, 2, 4, 16, 5)}


def one(kind: str, name: str) -> dict:
    """In the child: one check, its verdict, cost and parameter count."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from parity.check import cost
    from parity.cli.check import huge_pages_for_torch

    huge_pages_for_torch()  # as `parity check` runs a check

    base = cost.rss_bytes()
    t = time.perf_counter()
    if kind == "twin":
        import torchnets
        from parity import check

        params = sum(p.numel() for p in torchnets.build(name).parameters())
        r = check.check(name)
    else:
        import parity
        from helpers import transformer_pair

        tm, fm, ids = transformer_pair(*TRANSFORMERS[name])
        params = sum(p.numel() for p in tm.parameters())
        r = parity.check_pair(tm, fm, ids)
    # every distance and verdict too: a change to the engine must leave them as they were
    return {"kind": kind, "name": name, "params": params, "verdict": r.verdict(), "cost": r.cost,
            "verdicts": [dataclasses.asdict(v) for v in r.verdicts], "layers": r.layers,
            "chaos_runs": r.settings.get("chaos runs"),
            "process_seconds": time.perf_counter() - t, "process_peak_bytes": cost.peak_bytes(),
            "process_base_bytes": base}


def table(rows: list[dict]) -> str:
    gib = 2.0**30
    out = ["| check | parameters | verdict | wall | peak RSS | above base, per parameter | slowest phase |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['name']} | - | {r['error']} | - | - | - | - |")
            continue
        c = r["cost"]
        slow = max(c["phases"], key=lambda p: p["seconds"])
        per = (c["peak_bytes"] - r["process_base_bytes"]) / r["params"]
        out.append(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['verdict']} | {c['seconds'] / 60:.1f} min | "
                   f"{c['peak_bytes'] / gib:.1f} GiB | {per:.0f} B | {slow['name']} {slow['seconds']:.0f} s |")
    return "\n".join(out)


def fit(rows: list[dict]) -> str:
    """parity.check.cost's constants refitted to a bench's rows (least squares): time per training
    FLOP and per parameter tensor for each dtype's runs, from the twins' phase times; base and bytes
    per parameter of the peak, from every row."""
    import numpy as np
    import torch

    import netspecs
    import torchnets
    from netspecs import counts
    from parity.check import Config

    ok = [r for r in rows if "error" not in r]
    design: dict[str, list] = {"fp64": [], "fp32": []}
    times: dict[str, list] = {"fp64": [], "fp32": []}
    for r in (r for r in ok if r["kind"] == "twin"):
        cfg = Config(r["name"])
        with torch.device("meta"):
            tensors = len(list(torchnets.build(cfg.name, **cfg.model_overrides).parameters()))
        flops = counts.train_flops(netspecs.get(cfg.name, **cfg.model_overrides), cfg.size) * cfg.batch
        per_run = 2 * cfg.steps + 1 if cfg.steps else 2
        phases = {p["name"]: p["seconds"] for p in r["cost"]["phases"]}
        runs = {"fp64": 2 + r["chaos_runs"], "fp32": 2 * cfg.samples}
        for d in runs:
            design[d].append([runs[d] * per_run * flops, runs[d] * per_run * tensors])
            times[d].append(sum(v for k, v in phases.items() if ("float64" in k) == (d == "fp64")
                                and k != "judgement"))
    lines = []
    for d in design:
        if design[d]:
            x, y = np.array(design[d]), np.array(times[d])
            (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
            if b < 0:  # no time is negative: the FLOP term alone
                (a,), *_ = np.linalg.lstsq(x[:, :1], y, rcond=None)
                b = 0.0
            elif a < 0:
                (b,), *_ = np.linalg.lstsq(x[:, 1:], y, rcond=None)
                a = 0.0
            worst = max(abs(a * f + b * t - v) / v for (f, t), v in zip(x, y, strict=True))
            lines.append(f"{d}: {a:.2g} s per FLOP, {b:.2g} s per tensor (per step of one run; worst row "
                         f"off by {100 * worst:.0f}%)")
    p = np.array([[1.0, r["params"]] for r in ok])
    (base, per), *_ = np.linalg.lstsq(p, np.array([r["cost"]["peak_bytes"] for r in ok], float), rcond=None)
    worst = max(abs(base + per * r["params"] - r["cost"]["peak_bytes"]) for r in ok)
    lines.append(f"peak: {base / 2**30:.2f} GiB + {per:.0f} B per parameter (worst row off by {worst / 2**30:.2f} GiB)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vgg11_bn,wide_resnet50_2",
                    help="twins, comma-separated ('' for none)")
    ap.add_argument("--transformer", default="81M", help=f"transformer pairs: {', '.join(TRANSFORMERS)} ('' for none)")
    ap.add_argument("--out", type=Path, default=Path("engine_bench"))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per check")
    ap.add_argument("--no-malloc-huge-pages", action="store_true",
                    help="run the checks without GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (an A/B of that setting)")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    ap.add_argument("--fit", type=Path, metavar="ENGINE_JSON",
                    help="print parity.check.cost's constants refitted to a bench's engine.json, and exit")
    args = ap.parse_args()
    if args.fit:
        sys.path[:0] = [str(ROOT)]
        print(fit(json.loads(args.fit.read_text())))
        return 0
    if args.one:
        print("RESULT " + json.dumps(one(*args.one)))
        return 0
    jobs = [("twin", m) for m in args.models.split(",") if m] + \
           [("pair", t) for t in args.transformer.split(",") if t]
    unknown = [t for k, t in jobs if k == "pair" and t not in TRANSFORMERS]
    if unknown:
        print(f"error: unknown transformer size {unknown[0]!r}; known: {', '.join(TRANSFORMERS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(ROOT)]
    from parity.cli.check import malloc_huge_pages_env

    # each child as `parity check` runs a check: malloc's huge pages are set before it starts
    env = malloc_huge_pages_env(dict(os.environ)) if not args.no_malloc_huge_pages else None
    rows = []
    for kind, name in jobs:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", kind, name], capture_output=True, text=True,
                                  timeout=args.timeout, cwd=ROOT, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            rows.append(json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else
                        {"name": name, "error": f"exit {proc.returncode}: {proc.stderr[-300:]!r}"})
        except subprocess.TimeoutExpired:
            rows.append({"name": name, "error": f"ran past {args.timeout:.0f} s"})
        print(f"{name}: " + (rows[-1].get("error") or f"{rows[-1]['verdict']}, "
                             f"{rows[-1]['cost']['seconds']:.0f} s, {rows[-1]['cost']['peak_bytes'] / 2**30:.2f} GiB"),
              flush=True)
        (args.out / "engine.json").write_text(json.dumps(rows, indent=1))
        (args.out / "engine.md").write_text(table(rows) + "\n")
    print("\n" + table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
