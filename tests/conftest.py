"""Shared test helpers: which variants are heavy, small input sizes, reference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity import flops, specs

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "torchvision_state_dicts.json").read_text())["models"]

# Very deep nets: structure-only in the default suite.
VERY_DEEP = {"resnet1202", "plain1202"}


# One VGG of each kind stays in the default suite although its classifier alone is 120M weights.
REPRESENTATIVE = {"vgg11_bn", "vgg11_lrn"}


def is_heavy(name: str) -> bool:
    """Over 30M parameters or over 100 layers: marked slow (`make test-slow`)."""
    if name in REPRESENTATIVE:
        return False
    spec = specs.get(name)
    deep = isinstance(spec, specs.ResNetSpec) and sum(spec.depths) > 40
    return flops.count(spec).params > 30_000_000 or deep


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
