"""``parity doctor``: known convention mismatches between a torch and a Flax module on one random
batch, before any number is compared; exit 1 when there are any."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="known convention mismatches between a torch and a Flax module, before "
                       "any number is compared")
    p.add_argument("torch", help="MODULE:NAME of the torch module (a class or a factory taking no arguments)")
    p.add_argument("flax", help="MODULE:NAME of the Flax module (Linen or NNX)")
    p.add_argument("--input-shape", required=True, help="torch layout, comma separated, e.g. 2,3,32,32")
    p.add_argument("--tokens", type=int, help="integer inputs below this (token ids) instead of random floats")
    p.add_argument("--no-images", action="store_true", help="do not move 4-D/5-D inputs to channels-last")
    p.set_defaults(run=run)


def input_shape(text: str) -> tuple[int, ...]:
    """``"2,3,32,32"`` -> (2, 3, 32, 32); every size a positive integer."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--input-shape: expected positive integers separated by commas, got {text!r}")
    return shape


def run(args: argparse.Namespace) -> int:
    import jax.numpy as jnp
    import numpy as np
    import torch

    from parity import imports, layout
    from parity.check import doctor, pairs

    try:
        shape = input_shape(args.input_shape)
        t, f = imports.build(args.torch), imports.build(args.flax)
        t, f = pairs.sides(t, f)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.tokens, shape) if args.tokens else rng.standard_normal(shape)
    images = not args.no_images and not args.tokens
    fx = layout.channels_last(x, images)
    findings = doctor.diagnose(t.double(), f, (torch.from_numpy(x),), (jnp.asarray(fx),), pairs.flax_mode(f), images)
    for finding in findings:
        print(finding)
    print(f"{len(findings)} finding(s)" if findings else "no known convention mismatch found")
    return 1 if findings else 0
