"""``python -m parity bench``: jobs, the same-work check, tables, JSON, Markdown and plots."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from itertools import product
from pathlib import Path

from parity import profiling, report, throughput


def loss_tolerance(device: str, dtype: str) -> float:
    """How far two frameworks' first-step losses may be apart: the parity table's factor x floor
    for this device and dtype at default precision (the bench runs at default precision)."""
    from parity.config import TOLERANCES

    tol = TOLERANCES[(device, dtype, "default")]
    return tol.factor * tol.floor


def same_work(ms: dict[str, throughput.Measurement], device: str, dtype: str) -> tuple[bool, str]:
    losses = {fw: m.first_loss for fw, m in ms.items()}
    ref = next(iter(losses.values()))
    worst = max(abs(v - ref) / max(abs(ref), 1e-12) for v in losses.values())
    tol = loss_tolerance(device, dtype)
    text = ", ".join(f"{fw} {v:.6f}" for fw, v in losses.items())
    return worst <= tol, f"first-step losses {text}; max relative gap {worst:.1e} (tolerance {tol:.0e})"


def _plot(rows: list[dict], out: Path, sweep: bool) -> list[str]:
    plt = report.pyplot()
    files = []
    labels = sorted({(r["model"], r["batch"], r["size"]) for r in rows})
    fws = sorted({r["framework"] for r in rows}, key=throughput.FRAMEWORKS.index)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * len(fws)), 4))
    width = 0.8 / len(fws)
    for i, fw in enumerate(fws):
        vals = [next((r["images_per_s"] for r in rows if (r["model"], r["batch"], r["size"]) == lab
                      and r["framework"] == fw), 0) for lab in labels]
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=fw)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels([f"{m}\nb{b} {s}px" for m, b, s in labels], fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title(f"{rows[0]['mode']} throughput, {rows[0]['dtype']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)
    files.append("throughput.png")
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (model, size, fw) in sorted({(r["model"], r["size"], r["framework"]) for r in rows}):
            pts = sorted((r["batch"], r["images_per_s"]) for r in rows
                         if (r["model"], r["size"], r["framework"]) == (model, size, fw))
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{model} {size}px {fw}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title("scaling with batch size")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "batch_sweep.png", dpi=110)
        plt.close(fig)
        files.append("batch_sweep.png")
    return files


def _pct(v: float, over: float | None = None) -> str:
    """A percentage; '*' marks one above ``over`` (explained under the table)."""
    if math.isnan(v):
        return "-"
    return f"{100 * v:.1f}%" + ("*" if over is not None and v > over else "")


def profile_lines(profiles: list[tuple[str, list[profiling.Op]]]) -> list[str]:
    """Each profiled run's slowest operations, and a warning for any that dominates its step."""
    lines = []
    for label, ops in profiles:
        lines += [f"where the time goes, {label} (share of one profiled step):", *["  " + op.line() for op in ops]]
    for label, ops in profiles:
        lines += profiling.warnings(label, ops)
    return lines


def main(models: list[str], args: argparse.Namespace) -> int:
    from tqdm import tqdm

    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in frameworks if f not in throughput.FRAMEWORKS]
    if bad:
        raise SystemExit(f"error: unknown framework(s) {bad}; valid: {', '.join(throughput.FRAMEWORKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        peak = throughput.cpu_nominal_peak()
        achievable = throughput.Peak(throughput.cpu_peak_probe(args.dtype),
                                     f"measured: 2048^3 {args.dtype} torch matmul")
    else:
        peak = throughput.gpu_peak(args.dtype, tf32=True)
        achievable = throughput.Peak(float("nan"), "not measured on GPU")
    flags = args.xla_cpu_flags
    if flags == "tuned" and args.device == "cpu" and any(f.startswith("jax") for f in frameworks) \
            and not throughput.tuned_flags_supported():
        print(f"note: this jaxlib rejects {' '.join(throughput.tuned_cpu_flags('train'))}; "
              "JAX runs with XLA_FLAGS as given")
        flags = "stock"
    if args.device == "cpu" and flags == "tuned":
        print(f"the bench adds to XLA_FLAGS for JAX on CPU: {' '.join(throughput.tuned_cpu_flags(args.mode))} "
              "(XLA's convolution kernels instead of YNNPACK's"
              + ("; train steps: the call graph flattened after fusion" if args.mode == "train" else "")
              + "; --xla-cpu-flags stock to leave XLA_FLAGS as given)")
    devices = getattr(args, "devices", 1)
    if devices > 1 and args.mode != "train":
        raise SystemExit("error: --devices needs --mode train (data-parallel inference has no collective to compare)")
    if devices > 1:
        print(f"data-parallel: {devices} devices, --batch images per device; JAX: jax.shard_map over a Mesh, torch: "
              "DistributedDataParallel, both per-replica BatchNorm (the same work); scaling efficiency = global "
              f"images/s on {devices} devices / ({devices} x images/s on 1)"
              + ("; simulated CPU devices and ranks share this machine's cores" if args.device == "cpu" else ""))
    groups = [(m, b, s, d) for m, b, s in product(models, args.batch, args.image_size)
              for d in ([1, devices] if devices > 1 else [1])]
    rows, notes, refused = [], [], []
    profiles: list[tuple[str, list[profiling.Op]]] = []
    settings: dict = {}
    bar = tqdm(total=len(groups) * len(frameworks), desc="bench", unit="run", file=sys.stderr)
    single: dict[tuple, float] = {}  # (model, batch, size, framework) -> images/s on one device
    for model, batch, size, ndev in groups:
        ms: dict[str, throughput.Measurement] = {}
        label = f"{model} b{batch} {size}px" + (f" x{ndev} devices" if ndev > 1 else "")
        for fw in frameworks:
            bar.set_postfix_str(f"{label} {fw}")
            job = throughput.Job(model, fw, args.mode, batch, size, args.dtype, args.device, args.steps, args.warmup,
                                 args.compile_mode, profile=args.profile, xla_cpu_flags=flags, devices=ndev)
            try:
                ms[fw] = throughput.run_job(job)
                settings[fw] = ms[fw].settings
            except RuntimeError as e:  # one failed run must not lose the others' numbers
                tqdm.write(f"FAILED {model} {fw}: {e}", file=sys.stderr)
            bar.update()
        if len(ms) < len(frameworks):
            refused.append(model)
            notes.append(f"{label}: a framework failed; not reported")
            continue
        ok, text = same_work(ms, args.device, args.dtype)
        notes.append(f"{label}: {text}")
        if not ok:
            refused.append(model)
            tqdm.write(f"REFUSED {model}: the frameworks did not do the same work ({text})", file=sys.stderr)
            continue
        for fw, m in ms.items():
            if m.profile:
                profiles.append((f"{label} {fw}",
                                 [profiling.Op(**op) for op in m.profile]))
        group = [throughput.derived(m, peak.flops, achievable.flops) for m in ms.values()]
        ref = next((r for r in group if r["framework"] == "torch-compile"), None)
        for r in group:
            r["vs_torch_compile"] = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
            if ndev == 1:
                single[(model, batch, size, r["framework"])] = r["images_per_s"]
            one = single.get((model, batch, size, r["framework"]))
            r["scaling"] = r["images_per_s"] / (ndev * one) if ndev > 1 and one else float("nan")
        rows += group
    bar.close()
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "peak_flops": peak.flops, "peak_source": peak.source,
           "achievable_flops": achievable.flops, "achievable_source": achievable.source,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    dp = devices > 1
    head = ["model", "batch", *(["devices", "global img/s", "scaling"] if dp else []), "size", "framework",
            "compile s", "median ms", "p10-p90 ms", "img/s", "TFLOP/s", "MFU", "of matmul", "peak MiB",
            "vs torch-compile"]
    table = [head] + [[r["model"], str(r["batch"]),
                       *([str(r["devices"]), f"{r['images_per_s']:.1f}", _pct(r["scaling"])] if dp else []),
                       str(r["size"]), r["framework"], f"{r['compile_s']:.1f}",
                       f"{r['median_ms']:.1f}", f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}",
                       f"{r['images_per_s']:.1f}", f"{r['tflops']:.3f}",
                       _pct(r["mfu"], over=1), _pct(r["of_achievable"]), f"{r['peak_mem_mib']:.0f}",
                       f"{r['vs_torch_compile']:.2f}x"] for r in rows]
    print(f"\nbench: mode={args.mode} dtype={args.dtype} device={args.device} steps={args.steps} "
          f"warmup={args.warmup}\nMFU = achieved FLOP/s / {peak.flops / 1e9:.1f} GFLOP/s ({peak.source})\n"
          f"of matmul = achieved FLOP/s / {achievable.flops / 1e9:.1f} GFLOP/s, achievable ({achievable.source})")
    for fw, s in settings.items():
        print(f"settings {fw}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    print("same work: " + "\n           ".join(notes) + "\n")
    if len(table) > 1:
        print(report.text_table(table, right=tuple(range(4 + 3 * dp, 13 + 3 * dp))))
    over = [n for n in (throughput.over_peak(r, peak) for r in rows) if n]
    for note in over:
        print("* " + note)
    prof_lines = profile_lines(profiles)
    if prof_lines:
        print("\n" + "\n".join(prof_lines))
    files = _plot(rows, out, len(args.batch) > 1) if rows else []
    (out / "throughput.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "run"},
                                                "environment": env, "settings": settings, "same_work": notes,
                                                "refused": refused, "results": rows,
                                                "profiles": {k: profiling.as_dicts(v) for k, v in profiles}},
                                               indent=1, default=str))
    md = [f"# Benchmark ({args.mode}, {args.dtype}, {args.device})", "", f"Environment: {env}", "",
          *[f"- {fw}: {s}" for fw, s in settings.items()], "", *[f"- {n}" for n in notes], "",
          report.markdown_table(table), "", *[f"* {n}" for n in over], "",
          *(["```", *prof_lines, "```", ""] if prof_lines else []),
          *[f"![{f}]({f})" for f in files]]
    (out / "throughput.md").write_text("\n".join(md))
    print(f"\nreports: {out}/throughput.json, throughput.md, " + ", ".join(files))
    return 1 if refused else 0


def run(args: argparse.Namespace) -> int:
    from parity import specs

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in specs.list_models()]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {unknown}; valid: {', '.join(specs.list_models())}")
    args.batch = [int(b) for b in str(args.batch).split(",")]
    args.image_size = [int(s) for s in str(args.image_size).split(",")]
    return main(models, args)

