"""The command line, ``parity`` (or ``python -m parity``): one module per command, each with its
``register(subparsers)`` and ``run(args) -> exit code``; only this package prints for users and
decides exit codes. Registering imports neither torch nor jax: each command imports what it needs
when it runs."""

from __future__ import annotations

import argparse
import sys

from parity.cli import bench, check, convert, doctor, experiment, models, port

COMMANDS = (models, check, doctor, convert, port, bench, experiment)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parity", description="Twin VGG/ResNet nets in PyTorch and Flax: parity "
                                "judged against float64, checkpoint conversion, a fair benchmark, the papers' "
                                "experiments; and the same for your own models.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
