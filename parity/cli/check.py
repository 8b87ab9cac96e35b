"""``parity check``: the twins' parity (one device, or data-parallel with ``--devices N``), its table,
report.json, report.md and per-layer plots; each model's verdict is written the moment it exists."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from parity.cli import plots

if TYPE_CHECKING:
    from parity.check import Config, Result
    from parity.check.cost import Estimate

SUMMARY = ["eval", "train", "stats", "grads", "sgd_final", "adamw_final"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="parity of the twins: forward, train mode, grads, optimizer steps, per layer")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--models", nargs="+", default=["resnet20", "plain20", "resnet18"],
                   help="names, space or comma separated")
    g.add_argument("--all", action="store_true", help="every variant")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--precision", choices=("highest", "default"), default="highest")
    p.add_argument("--steps", type=int, help="optimizer trajectory length (default 10; 0 for resnet1202 and "
                   "plain1202, whose Flax side runs op by op: 10 steps add about 50 min there)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, help="input size (default: 32, the smallest every variant takes)")
    p.add_argument("--samples", type=int, default=5, help="working-dtype runs per framework (default 5; the "
                   "gradient-derived quantities need 5 to be judged)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel parity on N devices (CPU: simulated "
                   "JAX devices and N torch gloo processes; default 1: the single-device check)")
    p.add_argument("--processes", type=int, default=0, help="with --devices: also JAX over N jax.distributed "
                   "processes (the multi-process form; one CPU device each on CPU)")
    p.add_argument("--timeout", type=float, default=300, help="seconds any data-parallel collective may wait")
    p.add_argument("--report", type=Path, default=Path("reports/check"), help="folder for JSON/Markdown/PNG")
    p.add_argument("--estimate", action="store_true", help="print each model's expected wall time and peak "
                   "memory (from its parameter count, FLOPs and the settings) and stop")
    p.set_defaults(run=run)


def steps_for(name: str, args: argparse.Namespace) -> int:
    """``--steps`` when given; otherwise Config's default (10), or 0 for very deep nets, whose Flax
    side runs op by op (docs/parity.md, "Cost tiers")."""
    from parity.check import Config

    if args.steps is not None:
        return args.steps
    return 0 if not Config(name).jits else Config.steps


def config_for(name: str, args: argparse.Namespace) -> Config:
    from parity.check import Config

    return Config(name, batch=args.batch, size=args.size, steps=steps_for(name, args), device=args.device,
                  dtype=args.dtype, precision=args.precision, samples=args.samples)


def estimate_for(cfg: Config) -> Estimate:
    """The expected cost of ``cfg``'s check, from the twin's parameters and training FLOPs."""
    import torch

    import netspecs
    import torchnets
    from netspecs import counts
    from parity.check import cost

    with torch.device("meta"):  # counted, not drawn
        tensors = list(torchnets.build(cfg.name, **cfg.model_overrides).parameters())
    flops = counts.train_flops(netspecs.get(cfg.name, **cfg.model_overrides), cfg.size) * cfg.batch
    return cost.estimate(sum(p.numel() for p in tensors), flops, len(tensors), cfg.steps, cfg.samples)


def summary_rows(results: dict[str, Result]) -> list[list[str]]:
    from parity.check.judgement import fmt

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
    plt = plots.pyplot()
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
    """The variants the command names (``--models`` or ``--all``)."""
    import netspecs

    return netspecs.list_models() if getattr(args, "all", False) else netspecs.names(args.models)


def _shared(results: dict[str, Result]) -> tuple[dict, dict[str, dict]]:
    """(settings every model shared, each model's own): steps, BatchNorm statistics, jit per model."""
    first = next(iter(results.values())).settings if results else {}
    settings = {k: v for k, v in first.items() if all(r.settings.get(k) == v for r in results.values())}
    return settings, {n: {k: v for k, v in r.settings.items() if k not in settings} for n, r in results.items()}


def write_reports(out: Path, args: argparse.Namespace, results: dict[str, Result], env: dict) -> None:
    """report.json and report.md for the models judged so far (rewritten after each one)."""
    from parity import tables
    from parity.check.cost import describe
    from parity.check.judgement import detail_rows

    settings, own = _shared(results)
    rows = summary_rows(results)
    (out / "report.json").write_text(json.dumps({
        "environment": env, "settings": settings,
        "results": {n: {"ok": r.passed, "failures": r.failures(), "not_judged": r.not_judged(), "config": r.config,
                        "settings": own[n], "verdicts": [dataclasses.asdict(v) for v in r.verdicts],
                        "first_bad_layer": r.first_bad_layer, "layers": r.layers, "cost": r.cost}
                    for n, r in results.items()}}, indent=1, default=str))
    md = [f"# Parity report ({args.device}, {args.dtype}, precision {args.precision})", "",
          f"Environment: {env}", "", f"Settings: {settings}", "", tables.markdown_table(rows), ""]
    for n, r in results.items():
        md += [f"## {n}", ""] + ([f"Settings: {own[n]}", ""] if own[n] else [])
        md += [tables.markdown_table(detail_rows(r)), ""] + [f"- not judged: {x}" for x in r.not_judged()]
        md += ["", describe(r.cost)]
        md += ["", f"![{n} layers]({n}_layers.png)", ""]
    (out / "report.md").write_text("\n".join(md))


def huge_pages_for_torch() -> None:
    """torch's CPU allocator asks for transparent huge pages (torch's own ``THP_MEM_ALLOC_ENABLE``, read
    once, before torch's first allocation), unless the user set it: a check allocates model-sized
    tensors at every step, and faulting them in 4 KiB pages cost a VGG's torch runs a quarter of their
    time (docs/results.md, "What the parity engine costs"). Only where torch is not yet imported."""
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


# glibc's malloc (XLA's buffers, numpy's arrays) asks for transparent huge pages (glibc 2.35+): read once,
# at process start, so ``parity check`` runs itself again with it set (huge_pages_for_malloc)
MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"
_REEXEC_MARK = "PARITY_CHECK_MALLOC_REEXEC"  # set in the second run: one exec at most, whatever glibc did
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # "[never]": the kernel gives none


def malloc_huge_pages_env(environ: dict[str, str]) -> dict[str, str] | None:
    """``environ`` with ``MALLOC_HUGE_PAGES`` added to ``GLIBC_TUNABLES``, or None where it would not apply:
    not glibc 2.35+, no transparent huge pages, a user's ``glibc.malloc.hugetlb`` (theirs stands; ``=0``
    turns it off), or already run again once. A VGG's Flax float32 runs faulted 4 million 4 KiB pages
    each, a quarter of their time (docs/results.md, "What the parity engine costs"); the numbers are
    the same."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(_REEXEC_MARK) or "glibc.malloc.hugetlb" in tunables or not _glibc_at_least(2, 35):
        return None
    try:
        if "[never]" in THP_ENABLED.read_text():
            return None
    except OSError:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{MALLOC_HUGE_PAGES}" if tunables else MALLOC_HUGE_PAGES,
            _REEXEC_MARK: "1"}


def _glibc_at_least(major: int, minor: int) -> bool:
    import os

    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        have = tuple(int(x) for x in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):  # not glibc, or no confstr (macOS, Windows, musl)
        return False
    return name == "glibc" and have >= (major, minor)


def huge_pages_for_malloc() -> None:
    """This process run again (``os.execve``, the same command line) with ``malloc_huge_pages_env``'s
    environment, where it gives one; only from ``parity``'s own command line (``parity.__main__``),
    never inside a caller's process."""
    import os

    env = malloc_huge_pages_env(dict(os.environ))
    if env is not None and sys.executable:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def run(args: argparse.Namespace) -> int:
    huge_pages_for_torch()
    try:
        names = models(args)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.devices < 1:
        print(f"error: --devices: expected a positive count, got {args.devices}", file=sys.stderr)
        return 2
    if args.devices > 1:
        return run_data_parallel(names, args)
    from tqdm import tqdm

    from parity import check, tables
    from parity.check.cost import describe
    from parity.check.judgement import ILL_CONDITIONED, RANK_MIN_SAMPLES, RANK_P

    try:
        configs = {name: config_for(name, args) for name in names}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.estimate:
        for name, cfg in configs.items():
            print(f"{name}: {estimate_for(cfg).describe()}")
        return 0
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    results: dict[str, Result] = {}
    bar = tqdm(names, desc="parity", unit="model", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        tqdm.write(f"{name}: {estimate_for(configs[name]).describe()}", file=sys.stderr)
        r = check.check(configs[name])
        results[name] = r
        plot_layers(name, r, out / f"{name}_layers.png")
        write_reports(out, args, results, env)
        tqdm.write(f"{name}: {r.verdict()}" + ("" if r.passed else " - " + "; ".join(r.failures())), file=sys.stderr)
        tqdm.write(f"{name}: {describe(r.cost)}", file=sys.stderr)
    settings, own = _shared(results)
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
    print(tables.text_table(summary_rows(results)))
    for n, r in results.items():
        for line in r.not_judged():
            print(f"{n}: not judged: {line}")
    failed = [n for n, r in results.items() if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    print(f"reports: {out}/report.json, report.md, <model>_layers.png")
    return 1 if failed else 0


def run_data_parallel(names: list[str], args: argparse.Namespace) -> int:
    """``parity check --devices N``: the data-parallel parities per model, a table, report.json."""
    from parity import tables
    from parity.dataparallel import check as dp
    from parity.dataparallel import meshes

    if args.device == "cpu":
        meshes.use_cpu_devices(args.devices)
    steps = args.steps if args.steps is not None else 10
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    rows = [["model", "compared", "against", "judged", "step 1", "after", "losses", "ok"]]
    results, failed, notes = {}, [], []
    for name in names:
        comps = dp.check(name, args.devices, args.batch, args.size, steps, timeout_s=args.timeout,
                         samples=args.samples, processes=args.processes, device=args.device, dtype=args.dtype,
                         precision=args.precision)
        results[name] = [vars(c) | {"ok": c.ok, "not_judged": c.not_judged()} for c in comps]
        failed += [name] if not all(c.ok for c in comps) else []
        for c in comps:
            rows.append([name, c.what, c.against, c.kind, *(f"{c.errors[q]:.1e}" for q in dp.QUANTITIES),
                         "NO" if not c.ok else "not judged" if c.not_judged() else "yes"])
            notes += [f"{name}: {n}" for n in c.not_judged()]
        (out / "report.json").write_text(json.dumps({"devices": args.devices, "batch_per_device": args.batch,
                                                     "steps": steps, "device": args.device, "dtype": args.dtype,
                                                     "precision": args.precision, "results": results}, indent=1))
    print(f"\ndata-parallel parity: {args.devices} devices, {args.batch} images per device, {steps} SGD steps"
          + (" (simulated CPU devices: they share this machine's cores)" if args.device == "cpu" else ""))
    print("structure: float64, worst relative error per quantity (bound 1e-10); precision: working-dtype distance "
          "to torch DDP float64 (bound 3x DDP's own distance + the floor; a rank test over >= 5 samples, as the "
          "single-device check judges trajectories)\n")
    print(tables.text_table(rows))
    for n in notes:
        print(f"not judged: {n}")
    print(f"\n{len(names) - len(failed)} passed, {len(failed)} failed")
    print(f"report: {out}/report.json")
    return 1 if failed else 0
