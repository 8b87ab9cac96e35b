"""``parity port``: a torch model written as Flax source, proven, and saved (only if the proof passes)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("port", help="write a torch model as readable Flax source with its weights, proven "
                       "against the torch model")
    p.add_argument("spec", help="MODULE:CALLABLE building the torch model (mynet:Net, "
                   "torchvision.models:mobilenet_v3_small)")
    p.add_argument("--input-shape", required=True, help="torch layout, comma separated, e.g. 1,3,224,224; "
                   "several inputs separated by ';'")
    p.add_argument("--out", type=Path, required=True, help="folder to write (refused if it exists, unless --force)")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for CALLABLE")
    p.add_argument("--weights", type=Path, help="a state_dict file loaded strictly into the torch model first")
    p.add_argument("--api", choices=("linen", "nnx"), default="linen",
                   help="the Flax API of the written source: flax.linen modules, or native flax.nnx ones")
    p.add_argument("--tokens", type=int, help="integer inputs below this (token ids) instead of random floats")
    p.add_argument("--format", choices=("safetensors", "msgpack", "orbax"), default="safetensors",
                   help="the weights' file (orbax: an Orbax checkpoint directory, variables/)")
    p.add_argument("--samples", type=int, default=5, help="the proof's working-dtype runs per framework")
    p.add_argument("--steps", type=int, default=0, help="the proof's optimizer trajectory length (0: one SGD step)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=run)


def shapes(text: str) -> list[tuple[int, ...]]:
    from parity.cli.doctor import input_shape

    return [input_shape(part) for part in text.split(";")]


def run(args: argparse.Namespace) -> int:
    import torch

    from parity import imports
    from parity import port as porting
    from parity.convert import files

    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(args.kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError(f"--kwargs: expected a JSON object, got {args.kwargs!r}")
        in_shapes = shapes(args.input_shape)
        model = imports.torch_module(args.spec, kwargs, args.weights)
    except (ValueError, TypeError, files.CheckpointError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    inputs = tuple(torch.randint(0, args.tokens, s) if args.tokens else torch.randn(s) for s in in_shapes)
    try:
        p = porting.port(model, inputs, api=args.api, samples=args.samples, steps=args.steps)
    except porting.PortError as e:
        print(f"error: {e}\nnothing written", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(p.report)
    if not p.passed:
        print(f"error: the port does not compute what {args.spec} computes (first bad layer: "
              f"{p.result.first_bad_layer}); nothing written", file=sys.stderr)
        return 1
    p.spec = {"spec": args.spec, "kwargs": kwargs, "cwd": os.getcwd(), "token_high": args.tokens or 2,
              "weights": str(args.weights.resolve()) if args.weights else None}
    p.save(args.out, force=args.force, fmt=args.format)
    print(f"wrote {args.out}/: model.py, {args.format} weights, weight_map.json, port.json, test_port.py, report.md")
    return 0
