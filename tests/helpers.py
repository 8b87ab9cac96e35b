"""What the tests share: which variants are heavy and where each kind of test runs (the test tiers),
small input sizes, reference data, and the seams the tests plant faults through."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import netspecs
from netspecs import counts
from parity.check import config
from parity.convert import rules

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "torchvision_state_dicts.json").read_text())["models"]

# Very deep nets (parity.check.config.very_deep): structure-only in the default suite.
VERY_DEEP = {n for n in netspecs.list_models() if config.very_deep(n)}

# Above either of these a net is "heavy": its per-variant tests run in the slow tier.
DEEP_BLOCKS = 40
HEAVY_PARAMS = 30_000_000
# Heavy nets kept in the default tier anyway, one of each kind the others do not cover (VGG with
# BatchNorm, VGG with LRN).
DEFAULT_ANYWAY = frozenset({"vgg11_bn", "vgg11_lrn"})
# The full parity check costs minutes per net on 2 cores: one per block kind in CI, the rest in the
# huge tier; the other kinds get gradients and an optimizer step in CI (GRADIENT_CHECK).
FULL_CHECK = {"default": frozenset({"resnet20"}), "slow": frozenset({"resnet18", "plain20"})}
# Gradients, the input gradient and one SGD step in CI: a bottleneck net with projection shortcuts
# (resnet50, plus an AdamW step and a one-step trajectory), a VGG with LRN (max pools, the flatten
# permutation, LRN's gradient) and a grouped-convolution net.
GRADIENT_CHECK = {"default": frozenset({"resnet50"}), "slow": frozenset({"vgg11_lrn", "resnext50_32x4d"})}


def heavy(name: str) -> bool:
    """Over DEEP_BLOCKS blocks or HEAVY_PARAMS weights."""
    return config.blocks(name) > DEEP_BLOCKS or counts.count(netspecs.get(name)).params > HEAVY_PARAMS


def suite_tier(name: str) -> str:
    """"default" or "slow": where a per-variant test of ``name`` runs."""
    return "slow" if heavy(name) and name not in DEFAULT_ANYWAY else "default"


def check_suite_tier(name: str) -> str:
    """"default", "slow" or "huge": where the full parity check of ``name`` runs."""
    return next((t for t, names in FULL_CHECK.items() if name in names), "huge")


def is_heavy(name: str) -> bool:
    """Marked slow (`make test-slow`)."""
    return suite_tier(name) == "slow"


def variants(names=None, *, light_only: bool = False):
    """pytest params over model names, the heavy ones marked slow."""
    out = []
    for n in names if names is not None else netspecs.list_models():
        if light_only and is_heavy(n):
            continue
        out.append(pytest.param(n, marks=pytest.mark.slow) if is_heavy(n) else n)
    return out


def small_size(name: str) -> int:
    """The smallest input each variant takes (32 for all; ResNet's last stage is then 1x1)."""
    return max(netspecs.get(name).min_size, 32)


# --------------------------------------------------------------------------- planted faults


def rank_exits(rank: int, step: int) -> None:
    """A DDP step hook (parity.dataparallel.ddp.StepHook): rank 1 dies at step 1."""
    if rank == 1 and step == 1:
        os._exit(3)


def rank_hangs(rank: int, step: int) -> None:
    """A DDP step hook: rank 1 hangs at step 1 (far beyond any test's timeout)."""
    if rank == 1 and step == 1:
        time.sleep(3600)


def swap_mean_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic converter bug, planted through the weight rules (data): BatchNorm's running mean
    and variance crossed, for the twins and users' pairs alike."""
    swapped = {"running_mean": "var", "running_var": "mean"}
    for (kind, leaf), rule in list(rules.RULES.items()):
        if leaf in swapped:
            monkeypatch.setitem(rules.RULES, (kind, leaf), rules.Rule("batch_stats", swapped[leaf], rule.layout))
