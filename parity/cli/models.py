"""``parity list``: every built-in variant with its family, parameters and MACs (no framework imported)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="every model: family, parameters, MACs at the family's input size")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import netspecs
    from netspecs import counts
    from parity import tables

    rows = [("name", "family", "params", "GMACs", "input")]
    for name in netspecs.list_models():
        spec = netspecs.get(name)
        c = counts.count(spec)
        rows.append((name, spec.family, f"{c.params:,}", f"{c.macs / 1e9:.3f}",
                     f"{spec.input_size}x{spec.input_size}"))
    print(tables.text_table(rows, right=(2, 3)))
    return 0
