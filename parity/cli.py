"""Every subcommand's arguments, defined here alike; each imports its module only when it runs, so
`parity --help` and `parity list` import neither torch nor jax."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path


def _runs(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's entry point, its module imported only when it runs (torch and jax with it)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return run


def register_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every model: family, parameters, MACs at the family's input size")
    p.set_defaults(run=_runs("parity.cli", "list_models"))


def list_models(args: argparse.Namespace) -> int:
    from parity import flops, report, specs

    rows = [("name", "family", "params", "GMACs", "input")]
    for name in specs.list_models():
        spec = specs.get(name)
        c = flops.count(spec)
        rows.append((name, spec.family, f"{c.params:,}", f"{c.macs / 1e9:.3f}",
                     f"{spec.input_size}x{spec.input_size}"))
    print(report.text_table(rows, right=(2, 3)))
    return 0


def register_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between torch and Flax, verified on a batch")
    p.add_argument("input", type=Path, help=".pt/.pth/.safetensors/.msgpack to read")
    p.add_argument("output", type=Path, help="file to write (format from its extension)")
    p.add_argument("--model", help="variant name (python -m parity list); default: read from the checkpoint")
    p.add_argument("--to", choices=("flax", "torch"), help="target framework (default: the other one)")
    p.add_argument("--num-classes", type=int, help="classifier size; default: read from the checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(run=_runs("parity.convert", "run"))




def register_check(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--samples", type=int, default=5, help="working-dtype runs per framework (default 5)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel parity on N devices (CPU: simulated "
                   "JAX devices and N torch gloo processes; default 1: the single-device check)")
    p.add_argument("--processes", type=int, default=0, help="with --devices: also JAX over N jax.distributed "
                   "processes (the multi-process form; one CPU device each on CPU)")
    p.add_argument("--timeout", type=float, default=300, help="seconds any data-parallel collective may wait")
    p.add_argument("--report", type=Path, default=Path("reports/check"), help="folder for JSON/Markdown/PNG")
    p.set_defaults(run=_runs("parity.check", "run"))




def register_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="known convention mismatches between a torch and a Flax module, before "
                       "any number is compared")
    p.add_argument("torch", help="MODULE:NAME of the torch module (a class or a factory taking no arguments)")
    p.add_argument("flax", help="MODULE:NAME of the Flax Linen module")
    p.add_argument("--input-shape", required=True, help="torch layout, comma separated, e.g. 2,3,32,32")
    p.add_argument("--tokens", type=int, help="integer inputs below this (token ids) instead of random floats")
    p.add_argument("--no-images", action="store_true", help="do not move 4-D/5-D inputs to channels-last")
    p.set_defaults(run=_runs("parity.doctor", "run"))


def register_bench(sub: argparse._SubParsersAction) -> None:
    from parity.throughput import FRAMEWORKS  # numpy only

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
    p.add_argument("--devices", type=int, default=1, help="data-parallel on N devices (and 1, for scaling): "
                   "--batch images per device; CPU: simulated JAX devices and N torch gloo processes")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    p.set_defaults(run=_runs("parity.bench", "run"))




def register_experiment(sub: argparse._SubParsersAction) -> None:
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
    d.add_argument("--fast", action="store_true", help="8 epochs instead of 20 (about 6 min on 2 cores)")
    d.add_argument("--no-yardstick", dest="yardstick", action="store_false",
                   help="skip torch's band: the extra torch runs (channels_last, one thread, a 1-ulp start) "
                   "that change only the rounding")
    d.add_argument("--no-float64", dest="float64", action="store_false",
                   help="skip the first epoch in float64 (both twins) that checks the 1%% bound")
    d.add_argument("--out", type=Path, default=Path("reports/degradation"))
    d.set_defaults(run=_runs("parity.experiment", "degradation"))
    r = esub.add_parser("receptive-field", help="VGG's 3x3-stack argument and the A-E totals")
    r.add_argument("--channels", type=int, default=256)
    r.add_argument("--size", type=int, default=56)
    r.set_defaults(run=_runs("parity.experiment", "receptive_field"))


REGISTRARS = [register_list, register_check, register_doctor, register_convert, register_bench,
              register_experiment]


def build_parser() -> argparse.ArgumentParser:
    from parity import __main__

    p = argparse.ArgumentParser(prog="parity", description=__main__.__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    return p
