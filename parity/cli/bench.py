"""``parity bench``: the twins' jobs or a user's pair (``--pair``, ``--port``), measured by
``parity.bench.runs``; tables, JSON, Markdown and plots."""

from __future__ import annotations

import argparse
import dataclasses
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
    p.add_argument("--frameworks", help=f"comma separated (default {','.join(jobs.FRAMEWORKS)}; a pair: jax, "
                   "torch-compile, torch-eager)")
    p.add_argument("--compile-mode", choices=("default", "max-autotune"), default="default")
    p.add_argument("--xla-cpu-flags", choices=("tuned", "stock"), default="tuned",
                   help="tuned (default): JAX on CPU gets the bench's XLA flags (printed); stock: XLA_FLAGS as given")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one step per framework and print its slowest operations")
    p.add_argument("--devices", type=int, default=1, help="data-parallel on N devices (and 1, for scaling): "
                   "--batch images per device; CPU: simulated JAX devices and N torch gloo processes")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="train mode's optimizer, the same in every framework (default SGD, momentum 0.9)")
    g = p.add_argument_group("your own models (docs/benchmark.md, 'Your own models')")
    g.add_argument("--pair", metavar="TORCH,FLAX", help="MODULE:NAME of the torch and the Flax module, comma "
                   "separated (e.g. examples.convnet:TorchConvNet,examples.convnet:FlaxConvNet), instead of --models")
    g.add_argument("--port", type=Path, metavar="DIR", help="a folder written by parity port, instead of --models")
    g.add_argument("--input-shape", help="torch layout, comma separated, e.g. 16,3,64,64; several inputs separated "
                   "by ';' (a port's own by default)")
    g.add_argument("--kwargs", default="{}", help="JSON keyword arguments for both sides of --pair")
    g.add_argument("--weights", type=Path, help="a state_dict file loaded strictly into the torch module")
    g.add_argument("--tokens", type=int, help="integer inputs below this (token ids) instead of random floats")
    g.add_argument("--no-images", action="store_true", help="do not move 4-D/5-D inputs and outputs channels-last")
    g.add_argument("--loss", metavar="TORCH_FN,FLAX_FN", help="MODULE:FN of the loss in each framework, "
                   "fn(outputs, target) -> scalar (default: cross-entropy for (batch, classes) outputs, else "
                   "mean squared error)")
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


def main(groups: list[tuple[str, list[jobs.Job]]], args: argparse.Namespace) -> int:
    """Measure ``groups`` ((label, one job per framework) each), print the tables, write the reports."""
    from tqdm import tqdm

    from parity import tables
    from parity.bench import profiling, results, runs

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    peak, achievable = runs.peaks(args.device, args.dtype)
    session = runs.Session()
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "peak_flops": peak.flops, "peak_source": peak.source,
           "achievable_flops": achievable.flops, "achievable_source": achievable.source,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}

    def dump() -> None:  # after every group too: a run killed midway keeps what it measured
        (out / "throughput.json").write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "run"}, "environment": env,
             "settings": session.settings, "same_work": session.notes, "refused": session.refused,
             "results": session.rows, "profiles": {k: profiling.as_dicts(v) for k, v in session.profiles}},
            indent=1, default=str))

    bar = tqdm(total=sum(len(js) for _, js in groups), desc="bench", unit="run", file=sys.stderr)
    for label, group_jobs in groups:
        def on_job(job: jobs.Job, done: bool, label: str = label) -> None:
            if done:
                bar.update()
            else:
                bar.set_postfix_str(f"{label} {job.framework}")

        def failed(fw: str, text: str, model: str = group_jobs[0].model) -> None:
            tqdm.write(f"FAILED {model} {fw}: {text}", file=sys.stderr)

        try:
            runs.group(session, label, group_jobs, peak.flops, achievable.flops, on_job, failed)
        except jobs.JobError as e:
            bar.close()
            print(f"error: {label}: {e}", file=sys.stderr)
            dump()
            return 2
        if session.mismatches and session.mismatches[-1].startswith(f"{label}: "):
            tqdm.write(f"REFUSED {group_jobs[0].model}: the frameworks did not do the same work "
                       f"({session.mismatches[-1][len(label) + 2:]})", file=sys.stderr)
        dump()
    bar.close()
    rows = session.rows
    dp = getattr(args, "devices", 1) > 1
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
    flop_lines = flop_notes(rows)
    for line in flop_lines:
        print(line)
    for fw, s in session.settings.items():
        print(f"settings {fw}: " + ", ".join(f"{k}={v}" for k, v in s.items()))
    print("same work: " + "\n           ".join(session.notes) + "\n")
    if len(table) > 1:
        print(tables.text_table(table, right=tuple(range(4 + 3 * dp, 13 + 3 * dp))))
    over = [n for n in (results.over_peak(r, peak) for r in rows) if n]
    for note in over:
        print("* " + note)
    prof_lines = profile_lines(session.profiles)
    if prof_lines:
        print("\n" + "\n".join(prof_lines))
    files = _plot(rows, out, len(args.batch) > 1) if rows else []
    dump()
    md = [f"# Benchmark ({args.mode}, {args.dtype}, {args.device})", "", f"Environment: {env}", "",
          *[f"- {fw}: {s}" for fw, s in session.settings.items()], "", *[f"- {n}" for n in session.notes], "",
          *[f"- {n}" for n in flop_lines], *([""] if flop_lines else []),
          tables.markdown_table(table), "", *[f"* {n}" for n in over], "",
          *(["```", *prof_lines, "```", ""] if prof_lines else []),
          *[f"![{f}]({f})" for f in files]]
    (out / "throughput.md").write_text("\n".join(md))
    print(f"\nreports: {out}/throughput.json, throughput.md, " + ", ".join(files))
    return 1 if session.refused else 0


def flop_notes(rows: list[dict]) -> list[str]:
    """Where a pair's FLOPs come from: torch's count (MFU's) and XLA's beside it, per model."""
    seen, lines = set(), []
    for r in rows:
        if "flops_source" in r and r["model"] not in seen:
            seen.add(r["model"])
            lines.append(f"FLOPs {r['model']}: {r['torch_flops'] / 1e9:.3f} GFLOP/step by torch's FlopCounterMode "
                         f"(matmuls and convolutions), {r['xla_flops'] / 1e9:.3f} by XLA's cost analysis (every "
                         f"operation it counts); MFU from the {r['flops_source']} count")
    return lines


def _twin_groups(models: list[str], args: argparse.Namespace, frameworks: list[str], flags: str
                 ) -> list[tuple[str, list[jobs.Job]]]:
    devices = getattr(args, "devices", 1)
    groups = []
    for m, b, s in product(models, args.batch, args.image_size):
        for d in ([1, devices] if devices > 1 else [1]):
            label = f"{m} b{b} {s}px" + (f" x{d} devices" if d > 1 else "")
            groups.append((label, [jobs.Job(m, fw, args.mode, b, s, args.dtype, args.device, args.steps, args.warmup,
                                            args.compile_mode, profile=args.profile, xla_cpu_flags=flags,
                                            devices=d, optimizer=args.optimizer) for fw in frameworks]))
    return groups


def _pair_group(args: argparse.Namespace, frameworks: list[str], flags: str) -> tuple[str, list[jobs.Job]]:
    """The one group of ``--pair`` or ``--port``; ValueError naming the wrong argument."""
    from parity.bench import runs
    from parity.bench.pairs import PairSpec
    from parity.cli.port import shapes

    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs: expected a JSON object, got {args.kwargs!r}")
    sides = args.pair.split(",") if args.pair else []
    if args.pair and len(sides) != 2:
        raise ValueError(f"--pair: expected TORCH_SPEC,FLAX_SPEC (two MODULE:NAME), got {args.pair!r}")
    loss = args.loss.split(",") if args.loss else None
    if loss is not None and len(loss) != 2:
        raise ValueError(f"--loss: expected TORCH_FN,FLAX_FN (two MODULE:FN), got {args.loss!r}")
    if args.pair and not args.input_shape:
        raise ValueError("--input-shape is needed with --pair (e.g. 16,3,64,64)")
    if len(args.batch) > 1 or len(args.image_size) > 1:
        raise ValueError("--batch and --image-size sweeps take the twins; a pair's batch is its --input-shape")
    spec = PairSpec(*(sides or ["", ""]), kwargs, [list(s) for s in shapes(args.input_shape)] if args.input_shape
                    else [], args.tokens, str(args.weights) if args.weights else None, loss,
                    str(args.port) if args.port else None, not args.no_images)
    group_jobs = runs.pair_jobs(spec.to_json(), tuple(frameworks), mode=args.mode, dtype=args.dtype,
                                device=args.device, steps=args.steps, warmup=args.warmup,
                                compile_mode=args.compile_mode, profile=args.profile, xla_cpu_flags=flags,
                                devices=getattr(args, "devices", 1), optimizer=args.optimizer)
    shape = ";".join(",".join(map(str, s)) for s in spec.input_shapes)
    return f"{spec.label} {shape}", group_jobs


def run(args: argparse.Namespace) -> int:
    import netspecs
    from parity.bench import runs

    pair = bool(args.pair or args.port)
    if args.pair and args.port:
        print("error: --pair and --port are two ways to name a pair: give one", file=sys.stderr)
        return 2
    default_fws = ",".join(runs.PAIR_FRAMEWORKS) if pair else ",".join(jobs.FRAMEWORKS)
    frameworks = [f.strip() for f in (args.frameworks or default_fws).split(",") if f.strip()]
    bad = [f for f in frameworks if f not in jobs.FRAMEWORKS]
    if bad:
        print(f"error: unknown framework(s) {bad}; valid: {', '.join(jobs.FRAMEWORKS)}", file=sys.stderr)
        return 2
    devices = getattr(args, "devices", 1)
    if devices > 1 and args.mode != "train":
        print("error: --devices needs --mode train (data-parallel inference has no collective to compare)",
              file=sys.stderr)
        return 2
    try:
        args.batch = [int(b) for b in str(args.batch).split(",")]
        args.image_size = [int(s) for s in str(args.image_size).split(",")]
        if not pair:
            models = netspecs.names(args.models)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: --batch and --image-size take integers: {e}", file=sys.stderr)
        return 2
    flags = args.xla_cpu_flags
    if pair:  # the arguments and the pair itself first: a usage error should not wait for the flags' probe
        try:
            groups = [_pair_group(args, frameworks, flags)]
            runs.check_pair_input(groups[0][1])
        except (ValueError, json.JSONDecodeError) as e:  # JobError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        groups = _twin_groups(models, args, frameworks, flags)
    if flags == "tuned" and args.device == "cpu" and any(f.startswith("jax") for f in frameworks) \
            and not jobs.tuned_flags_supported():
        print(f"note: this jaxlib rejects {' '.join(jobs.tuned_cpu_flags('train'))}; "
              "JAX runs with XLA_FLAGS as given")
        flags = "stock"
        groups = [(label, [dataclasses.replace(j, xla_cpu_flags=flags) for j in js]) for label, js in groups]
    if args.device == "cpu" and flags == "tuned":
        print(f"the bench adds to XLA_FLAGS for JAX on CPU: {' '.join(jobs.tuned_cpu_flags(args.mode))} "
              "(XLA's convolution kernels instead of YNNPACK's"
              + ("; train steps: the call graph flattened after fusion" if args.mode == "train" else "")
              + "; --xla-cpu-flags stock to leave XLA_FLAGS as given)")
    if devices > 1:
        print(f"data-parallel: {devices} devices, --batch images per device; JAX: jax.shard_map over a Mesh, torch: "
              "DistributedDataParallel, both per-replica BatchNorm (the same work); scaling efficiency = global "
              f"images/s on {devices} devices / ({devices} x images/s on 1)"
              + ("; simulated CPU devices and ranks share this machine's cores" if args.device == "cpu" else ""))
    return main(groups, args)
