"""``parity bench``: the jobs, the same-work check, tables, JSON, Markdown and plots."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING

from parity.bench import jobs
from parity.cli import plots

if TYPE_CHECKING:
    from parity.bench import profiling


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput: jax.jit vs torch.compile vs torch eager, same work")
    p.add_argument("--models", default="resnet18", help="comma separated (default resnet18)")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--batch", default="32", help="batch size, or a comma separated sweep")
    p.add_argument("--image-size", default="64", help="input size, or a comma separated sweep")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling call")
    p.add_argument("--frameworks", default=",".join(jobs.FRAMEWORKS))
    p.add_argument("--compile-mode", choices=("default", "max-autotune"), default="default")
    p.add_argument("--xla-cpu-flags", choices=("tuned", "stock"), default="tuned",
                   help="tuned (default): JAX on CPU gets the bench's XLA flags (printed); stock: XLA_FLAGS as given")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one step per framework and print its slowest operations")
    p.add_argument("--devices", type=int, default=1, help="data-parallel on N devices (and 1, for scaling): "
                   "--batch images per device; CPU: simulated JAX devices and N torch gloo processes")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    p.set_defaults(run=run)


def _plot(rows: list[dict], out: Path, sweep: bool) -> list[str]:
    plt = plots.pyplot()
    files = []
    labels = sorted({(r["model"], r["batch"], r["size"]) for r in rows})
    fws = sorted({r["framework"] for r in rows}, key=jobs.FRAMEWORKS.index)
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
    from parity.bench import profiling

    """Each profiled run's slowest operations, and a warning for any that dominates its step."""
    lines = []
    for label, ops in profiles:
        lines += [f"where the time goes, {label} (share of one profiled step):", *["  " + op.line() for op in ops]]
    for label, ops in profiles:
        lines += profiling.warnings(label, ops)
    return lines


def main(models: list[str], args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from parity import tables
    from parity.bench import peaks, profiling, results

    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in frameworks if f not in jobs.FRAMEWORKS]
    if bad:
        print(f"error: unknown framework(s) {bad}; valid: {', '.join(jobs.FRAMEWORKS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        peak = peaks.cpu_nominal_peak()
        # bf16: the faster of torch's bf16 and fp32 products (without a bf16 kernel, XLA computes bf16
        # dots in fp32, far above torch's bf16 product)
        probes = {d: peaks.cpu_peak_probe(d) for d in dict.fromkeys([args.dtype, "fp32"])}
        best = max(probes, key=probes.get)
        achievable = peaks.Peak(probes[best], f"measured: the best {best} torch matmul (up to 2048^3)"
                                + (f"; bf16 {probes['bf16'] / 1e9:.1f} GFLOP/s" if best != args.dtype else ""))
    else:
        peak = peaks.gpu_peak(args.dtype, tf32=True)
        achievable = peaks.Peak(peaks.gpu_peak_probe(args.dtype), f"measured: 8192^3 {args.dtype} torch matmul")
    flags = args.xla_cpu_flags
    if flags == "tuned" and args.device == "cpu" and any(f.startswith("jax") for f in frameworks) \
            and not jobs.tuned_flags_supported():
        print(f"note: this jaxlib rejects {' '.join(jobs.tuned_cpu_flags('train'))}; "
              "JAX runs with XLA_FLAGS as given")
        flags = "stock"
    if args.device == "cpu" and flags == "tuned":
        print(f"the bench adds to XLA_FLAGS for JAX on CPU: {' '.join(jobs.tuned_cpu_flags(args.mode))} "
              "(XLA's convolution kernels instead of YNNPACK's"
              + ("; train steps: the call graph flattened after fusion" if args.mode == "train" else "")
              + "; --xla-cpu-flags stock to leave XLA_FLAGS as given)")
    devices = getattr(args, "devices", 1)
    if devices > 1 and args.mode != "train":
        print("error: --devices needs --mode train (data-parallel inference has no collective to compare)",
              file=sys.stderr)
        return 2
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
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "peak_flops": peak.flops, "peak_source": peak.source,
           "achievable_flops": achievable.flops, "achievable_source": achievable.source,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}

    def dump() -> None:  # after every group too: a run killed midway keeps what it measured
        (out / "throughput.json").write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "run"}, "environment": env, "settings": settings,
             "same_work": notes, "refused": refused, "results": rows,
             "profiles": {k: profiling.as_dicts(v) for k, v in profiles}}, indent=1, default=str))

    bar = tqdm(total=len(groups) * len(frameworks), desc="bench", unit="run", file=sys.stderr)
    single: dict[tuple, float] = {}  # (model, batch, size, framework) -> images/s on one device
    for model, batch, size, ndev in groups:
        ms: dict[str, jobs.Measurement] = {}
        label = f"{model} b{batch} {size}px" + (f" x{ndev} devices" if ndev > 1 else "")
        for fw in frameworks:
            bar.set_postfix_str(f"{label} {fw}")
            job = jobs.Job(model, fw, args.mode, batch, size, args.dtype, args.device, args.steps, args.warmup,
                                 args.compile_mode, profile=args.profile, xla_cpu_flags=flags, devices=ndev)
            try:
                ms[fw] = jobs.run_job(job)
                settings[fw] = ms[fw].settings
            except RuntimeError as e:  # one failed run must not lose the others' numbers
                tqdm.write(f"FAILED {model} {fw}: {e}", file=sys.stderr)
            bar.update()
        failed = [fw for fw in frameworks if fw not in ms]
        if failed:  # the others' numbers are kept, and the run exits non-zero
            refused.append(f"{model} ({', '.join(failed)} failed)")
            notes.append(f"{label}: {', '.join(failed)} failed (its error is above); the others reported")
        if len(ms) >= 2:
            ok, text = results.same_work(ms, args.device, args.dtype)
            notes.append(f"{label}: {text}")
            if not ok:
                refused.append(model)
                tqdm.write(f"REFUSED {model}: the frameworks did not do the same work ({text})", file=sys.stderr)
                dump()
                continue
        elif ms:
            notes.append(f"{label}: same work not checked (only {next(iter(ms))} ran)")
        else:
            dump()
            continue
        for fw, m in ms.items():
            if m.profile:
                profiles.append((f"{label} {fw}",
                                 [profiling.Op(**op) for op in m.profile]))
        group = [results.derived(m, peak.flops, achievable.flops) for m in ms.values()]
        ref = next((r for r in group if r["framework"] == "torch-compile"), None)
        for r in group:
            r["vs_torch_compile"] = r["images_per_s"] / ref["images_per_s"] if ref else float("nan")
            if ndev == 1:
                single[(model, batch, size, r["framework"])] = r["images_per_s"]
            one = single.get((model, batch, size, r["framework"]))
            r["scaling"] = r["images_per_s"] / (ndev * one) if ndev > 1 and one else float("nan")
        rows += group
        dump()
    bar.close()
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
        print(tables.text_table(table, right=tuple(range(4 + 3 * dp, 13 + 3 * dp))))
    over = [n for n in (results.over_peak(r, peak) for r in rows) if n]
    for note in over:
        print("* " + note)
    prof_lines = profile_lines(profiles)
    if prof_lines:
        print("\n" + "\n".join(prof_lines))
    files = _plot(rows, out, len(args.batch) > 1) if rows else []
    dump()
    md = [f"# Benchmark ({args.mode}, {args.dtype}, {args.device})", "", f"Environment: {env}", "",
          *[f"- {fw}: {s}" for fw, s in settings.items()], "", *[f"- {n}" for n in notes], "",
          tables.markdown_table(table), "", *[f"* {n}" for n in over], "",
          *(["```", *prof_lines, "```", ""] if prof_lines else []),
          *[f"![{f}]({f})" for f in files]]
    (out / "throughput.md").write_text("\n".join(md))
    print(f"\nreports: {out}/throughput.json, throughput.md, " + ", ".join(files))
    return 1 if refused else 0


def run(args: argparse.Namespace) -> int:
    import netspecs

    try:
        models = netspecs.names(args.models)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    args.batch = [int(b) for b in str(args.batch).split(",")]
    args.image_size = [int(s) for s in str(args.image_size).split(",")]
    return main(models, args)

