"""Command line: python -m parity {list,check,doctor,convert,bench,experiment} (also the `parity` script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["check"]:  # this process's own command line: it may run itself again
        from parity.cli.check import huge_pages_for_malloc

        huge_pages_for_malloc()
    from parity import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
