"""Argument definitions of the heavy subcommands; each imports its module only when it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _overrides(args: argparse.Namespace) -> dict:
    return {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}


def register_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between torch and Flax, verified on a batch")
    p.add_argument("input", type=Path, help=".pt/.pth/.safetensors/.msgpack to read")
    p.add_argument("output", type=Path, help="file to write (format from its extension)")
    p.add_argument("--model", required=True, help="variant name (python -m parity list)")
    p.add_argument("--to", choices=("flax", "torch"), help="target framework (default: the other one)")
    p.add_argument("--num-classes", type=int, help="classifier size, when not the variant's default")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    import numpy as np

    from parity import convert, io

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if args.output.resolve() == args.input.resolve():
        print("error: OUTPUT must differ from INPUT (the input is never overwritten)", file=sys.stderr)
        return 2
    try:
        obj = io.load(args.input)
        kind = "torch" if io.is_state_dict(obj) else "flax"
        target = args.to or ("flax" if kind == "torch" else "torch")
        ov = _overrides(args)
        if kind == "torch":
            sd, variables = obj, convert.torch_to_flax(obj, args.model, **ov)
        else:
            variables, sd = obj, convert.flax_to_torch(obj, args.model, **ov)
        diff, scale = convert.verify(sd, variables, args.model, **ov)
    except (io.CheckpointError, convert.ConversionError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.model}: {kind} -> {target}; one random batch through both frameworks: "
          f"max |torch - flax| = {diff:.3g} (output scale {scale:.3g})")
    if not np.isfinite(diff) or diff > 1e-4 * max(scale, 1.0):
        print("error: the converted model does not reproduce the original; nothing written", file=sys.stderr)
        return 1
    io.save(args.output, variables if target == "flax" else sd)
    print(f"wrote {args.output}")
    return 0


REGISTRARS: list = [register_convert]


DEFAULT_CHECK = ("resnet20", "plain20", "resnet18")


def _models(args: argparse.Namespace) -> list[str]:
    from parity import specs

    names = specs.list_models() if getattr(args, "all", False) else [
        m.strip() for m in ",".join(args.models).split(",") if m.strip()]
    unknown = [n for n in names if n not in specs.list_models()]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; valid: {', '.join(specs.list_models())}")
    return names


def register_check(sub) -> None:
    p = sub.add_parser("check", help="parity of the twins: forward, train mode, grads, optimizer steps, per layer")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--models", nargs="+", default=list(DEFAULT_CHECK), help="names, space or comma separated")
    g.add_argument("--all", action="store_true", help="every variant")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--precision", choices=("highest", "default"), default="highest")
    p.add_argument("--steps", type=int, help="optimizer trajectory length (default 10; 0 for resnet1202 and "
                   "plain1202, whose Flax side runs op by op: 10 steps add about 50 min there)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, help="input size (default: 32, the smallest every variant takes)")
    p.add_argument("--samples", type=int, default=5, help="working-dtype runs per framework (default 5)")
    p.add_argument("--report", type=Path, default=Path("reports/check"), help="folder for JSON/Markdown/PNG")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from parity import checkrun

    return checkrun.main(_models(args), args)


REGISTRARS.append(register_check)


def register_bench(sub) -> None:
    from parity import benchrun

    benchrun.register(sub)


REGISTRARS.append(register_bench)


def register_experiment(sub) -> None:
    from parity import experiment

    experiment.register(sub)


REGISTRARS.append(register_experiment)
