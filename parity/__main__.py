"""Command line: python -m parity {list,check,convert,bench,experiment} (also the `parity` script)."""

from __future__ import annotations

import argparse
import sys

from parity import flops, report, specs


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("name", "family", "params", "GMACs", "input")]
    for name in specs.list_models():
        spec = specs.get(name)
        c = flops.count(spec)
        rows.append((name, spec.family, f"{c.params:,}", f"{c.macs / 1e9:.3f}",
                     f"{spec.input_size}x{spec.input_size}"))
    print(report.text_table(rows, right=(2, 3)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parity", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model: family, parameters, MACs at the family's input size")
    for register in _registrars():
        register(sub)
    return p


def _registrars():
    """Each heavy subcommand registers its own arguments; its module is imported only when run."""
    from parity import cli
    return cli.REGISTRARS


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return cmd_list(args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
