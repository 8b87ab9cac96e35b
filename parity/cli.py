"""Every subcommand's arguments, defined here alike; each imports its module only when it runs, so
`parity --help` and `parity list` import neither torch nor jax."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path


def _runs(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's entry point, its module imported only when it runs (torch and jax with it)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


def _overrides(args: argparse.Namespace) -> dict:
    return {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}


def register_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between torch and Flax, verified on a batch")
    p.add_argument("input", type=Path, help=".pt/.pth/.safetensors/.msgpack to read")
    p.add_argument("output", type=Path, help="file to write (format from its extension)")
    p.add_argument("--model", help="variant name (python -m parity list); default: read from the checkpoint")
    p.add_argument("--to", choices=("flax", "torch"), help="target framework (default: the other one)")
    p.add_argument("--num-classes", type=int, help="classifier size; default: read from the checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=run_convert)


def _variant(shapes: dict, args: argparse.Namespace) -> tuple[str, dict] | str:
    """(model, overrides) for the checkpoint, or an error message. A classifier size that is the only
    difference from --model is read from the checkpoint; a wrong or missing --model is named."""
    from parity import convert, specs

    if args.model and args.model not in specs.list_models():
        return f"unknown model {args.model!r}; valid: {', '.join(specs.list_models())}"
    if args.model:
        ov = _overrides(args)
        if ov or convert.fits(shapes, args.model):
            return args.model, ov  # converting reports every problem, if any
        n = convert.classifier_size(shapes, args.model)
        if n is not None and convert.fits(shapes, args.model, n):
            return args.model, {"num_classes": n}
    found = convert.identify(shapes)
    if args.model and found:
        names = ", ".join(m + (f" (num_classes={o['num_classes']})" if o else "") for m, o in found)
        return (f"the checkpoint does not fit {args.model}; every key and shape fits {names}: "
                f"run with --model {found[0][0]}" + (" (or another of these)" if len(found) > 1 else ""))
    if args.model:
        return args.model, _overrides(args)  # no variant fits: the conversion lists every problem
    if len(found) == 1:
        return found[0]
    if found:
        return (f"the checkpoint fits {len(found)} variants with the same weights ({', '.join(m for m, _ in found)}); "
                "pass --model")
    return "no variant has exactly this checkpoint's keys and shapes; pass --model NAME to see every problem"


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
        found = _variant(convert.torch_shapes(obj), args)
        if isinstance(found, str):
            print(f"error: {found}", file=sys.stderr)
            return 1
        model, ov = found
        if not args.model:
            print(f"{args.input}: identified as {model} from its keys and shapes")
        if ov.get("num_classes") and not args.num_classes:
            print(f"{model}: the checkpoint's classifier has {ov['num_classes']} classes; converting with "
                  f"num_classes={ov['num_classes']}")
        if kind == "torch":
            sd, variables = obj, convert.torch_to_flax(obj, model, **ov)
        else:
            variables, sd = obj, convert.flax_to_torch(obj, model, **ov)
        diff, scale = convert.verify(sd, variables, model, **ov)
    except (io.CheckpointError, convert.ConversionError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{model}: {kind} -> {target}; one random batch through both frameworks: "
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
    from parity.bench import FRAMEWORKS  # numpy only

    p = sub.add_parser("bench", help="throughput: jax.jit vs torch.compile vs torch eager, same work")
    p.add_argument("--models", default="resnet18", help="comma separated (default resnet18)")
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--batch", default="32", help="batch size, or a comma separated sweep")
    p.add_argument("--image-size", default="64", help="input size, or a comma separated sweep")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the compiling call")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--compile-mode", choices=("default", "max-autotune"), default="default")
    p.add_argument("--xla-cpu-flags", choices=("tuned", "stock"), default="tuned",
                   help="tuned (default): JAX on CPU gets the bench's XLA flags (printed); stock: XLA_FLAGS as given")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one step per framework and print its slowest operations")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    p.set_defaults(run=_runs("parity.benchrun", "run"))


REGISTRARS.append(register_bench)


def register_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="the papers' experiments: degradation, receptive-field")
    esub = p.add_subparsers(dest="experiment", required=True)
    d = esub.add_parser("degradation", help="plain vs residual nets, both frameworks (ResNet Fig. 6)")
    d.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    d.add_argument("--data-dir", type=Path, help="folder with CIFAR-10's binary .bin files")
    d.add_argument("--nets", help="comma separated (default plain20,plain56,resnet20,resnet56)")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--warmup-epochs", type=int, default=1, help="epochs at lr/10 first (default 1)")
    d.add_argument("--batch", type=int, default=128)
    d.add_argument("--lr", type=float, default=0.1)
    d.add_argument("--upscale", type=int, default=1, help="digits only: pixel-repeat factor (1: native 8x8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-yardstick", dest="yardstick", action="store_false",
                   help="skip the extra torch run from a 1-ulp start that measures float32 chaos")
    d.add_argument("--no-float64", dest="float64", action="store_false",
                   help="skip the first epoch in float64 (both twins) that checks the 1%% bound")
    d.add_argument("--out", type=Path, default=Path("reports/degradation"))
    d.set_defaults(run=_runs("parity.experiment", "degradation"))
    r = esub.add_parser("receptive-field", help="VGG's 3x3-stack argument and the A-E totals")
    r.add_argument("--channels", type=int, default=256)
    r.add_argument("--size", type=int, default=56)
    r.set_defaults(run=_runs("parity.experiment", "receptive_field"))


REGISTRARS.append(register_experiment)
