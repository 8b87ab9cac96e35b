"""Shared test helpers: which variants are heavy, small input sizes, reference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity import specs, tiers

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "torchvision_state_dicts.json").read_text())["models"]

# Very deep nets (parity.tiers): structure-only in the default suite.
VERY_DEEP = {n for n in specs.list_models() if tiers.very_deep(n)}


def is_heavy(name: str) -> bool:
    """Marked slow (`make test-slow`): parity.tiers.suite_tier."""
    return tiers.suite_tier(name) == "slow"


def variants(names=None, *, light_only: bool = False):
    """pytest params over model names, the heavy ones marked slow."""
    out = []
    for n in names if names is not None else specs.list_models():
        if light_only and is_heavy(n):
            continue
        out.append(pytest.param(n, marks=pytest.mark.slow) if is_heavy(n) else n)
    return out


def small_size(name: str) -> int:
    """The smallest input each variant takes (32 for all; ResNet's last stage is then 1x1)."""
    return specs.get(name).min_size if specs.get(name).min_size >= 32 else 32
