"""``parity convert``: read a checkpoint, identify its variant, convert, verify on a batch, then write
(atomically, never over the input, never over a file without ``--force``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between torch and Flax, verified on a batch")
    p.add_argument("input", type=Path, help=".pt/.pth/.safetensors/.msgpack file or Orbax checkpoint directory "
                   "to read")
    p.add_argument("output", type=Path, help="file to write (format from its extension) or, with --format orbax, "
                   "the Orbax checkpoint directory")
    p.add_argument("--format", choices=("safetensors", "torch", "msgpack", "orbax"),
                   help="the output's format (default: from its extension)")
    p.add_argument("--model", help="variant name (parity list); default: read from the checkpoint")
    p.add_argument("--to", choices=("flax", "torch"), help="target framework (default: the other one)")
    p.add_argument("--num-classes", type=int, help="classifier size; default: read from the checkpoint")
    p.add_argument("--port", type=Path, metavar="DIR", help="a folder written by parity port: convert by its "
                   "weight_map.json and verify with its model.py against the torch module it came from")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict:
    return {"num_classes": args.num_classes} if getattr(args, "num_classes", None) else {}


def variant(shapes: dict, kind: str, args: argparse.Namespace) -> tuple[str, dict] | str:
    """(model, overrides) for the checkpoint, or an error message. A classifier size that is the only
    difference from --model is read from the checkpoint; a wrong or missing --model is named."""
    import netspecs
    from parity.convert import twins

    if args.model and args.model not in netspecs.list_models():
        return f"unknown model {args.model!r}; valid: {', '.join(netspecs.list_models())}"
    if args.model:
        ov = _overrides(args)
        if ov or twins.fits(shapes, args.model, kind=kind):
            return args.model, ov  # converting reports every problem, if any
        n = twins.classifier_size(shapes, args.model, kind)
        if n is not None and twins.fits(shapes, args.model, n, kind):
            return args.model, {"num_classes": n}
    found = twins.identify(shapes, kind)
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


def run(args: argparse.Namespace) -> int:

    from parity.convert import files, twins

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    if args.output.resolve() == args.input.resolve():
        print("error: OUTPUT must differ from INPUT (the input is never overwritten)", file=sys.stderr)
        return 2
    if args.port and (args.model or args.num_classes):
        print("error: --port converts by the port's own weight map; --model and --num-classes are for the "
              "built-in variants", file=sys.stderr)
        return 2
    try:  # before any conversion work: an output whose format is unknown
        files.format_of(args.output, args.format)
    except files.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format and args.to:
        fits = {"torch": ("safetensors", "torch"), "flax": ("safetensors", "msgpack", "orbax")}[args.to]
        if args.format not in fits:
            print(f"error: --format {args.format} does not hold {args.to}'s weights; for --to {args.to}: "
                  f"{', '.join(fits)}", file=sys.stderr)
            return 2
    if args.port:
        return _port(args)
    try:
        obj = files.load(args.input)
        _left_behind(args.input)
        kind, shapes = twins.checkpoint_shapes(obj)
        target = args.to or ("flax" if kind == "torch" else "torch")
        found = variant(shapes, kind, args)
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
            sd, variables = obj, twins.torch_to_flax(obj, model, **ov)
        else:
            variables, sd = obj, twins.flax_to_torch(obj, model, **ov)
        diff, scale = twins.verify(sd, variables, model, **ov)
    except (files.CheckpointError, twins.ConversionError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{model}: {kind} -> {target}; one random batch through both frameworks: "
          f"max |torch - flax| = {diff:.3g} (output scale {scale:.3g})")
    return _write(args.output, variables if target == "flax" else sd, diff, scale, args.format)


def _left_behind(path: Path) -> None:
    """Say what of an Orbax training state a conversion does not carry (its step, optimizer state)."""
    from parity.convert import orbax_dirs

    if path.is_dir():
        rest = orbax_dirs.others(path)
        if rest:
            print(f"{path}: converting its Flax variables (params, batch_stats); not converted: {', '.join(rest)}")


def _write(output: Path, converted: dict, diff: float, scale: float, fmt: str | None = None) -> int:
    import numpy as np

    from parity.convert import files

    if not np.isfinite(diff) or diff > 1e-4 * max(scale, 1.0):
        print("error: the converted model does not reproduce the original; nothing written", file=sys.stderr)
        return 1
    try:
        files.save(output, converted, fmt=fmt)
    except files.CheckpointError as e:
        print(f"error: {e}; nothing written", file=sys.stderr)
        return 1
    print(f"wrote {output}" + ("/ (Orbax checkpoint)" if output.is_dir() else ""))
    return 0


def _port(args: argparse.Namespace) -> int:
    """A checkpoint of a ported model, moved by the port's weight map and verified with its model.py."""
    from parity.convert import files
    from parity.convert.rules import MappingError
    from parity.port import files as saved

    try:
        obj = files.load(args.input)
        _left_behind(args.input)
        target, converted = saved.convert(args.port, obj)
        sd, variables = (obj, converted) if target == "flax" else (converted, obj)
        diff, scale = saved.verify(args.port, sd, variables)
    except (files.CheckpointError, MappingError, ValueError, KeyError, TypeError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.to and args.to != target:
        print(f"error: the checkpoint is already {args.to}'s", file=sys.stderr)
        return 2
    print(f"port {args.port}: -> {target}; one random batch through the torch module and model.py: "
          f"max |torch - flax| = {diff:.3g} (output scale {scale:.3g})")
    return _write(args.output, converted, diff, scale, args.format)
