"""Command line: python -m parity {list,check,doctor,convert,bench,experiment} (also the `parity` script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from parity import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
