"""Argument definitions of the heavy subcommands; each imports its module only when it runs."""

from __future__ import annotations

REGISTRARS: list = []
