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


def transformer_pair(vocab: int = 50, dim: int = 32, depth: int = 2, heads: int = 4, length: int = 16,
                     num_classes: int = 5, batch: int = 2, seed: int = 0):
    """(torch module, Flax module, token ids) of a transformer-shaped pair of any size: token and position
    embeddings, ``depth`` pre-LayerNorm blocks (self-attention, GELU MLP), a final LayerNorm and a Linear
    head over tokens; Flax names mirror torch's (``blocks_0.attn.qkv``). Parameters: about
    vocab x dim + depth x 12 dim^2 + dim x num_classes (81M: ``transformer_pair(16000, 768, 8, 12, 64,
    16000)``). The engine bench (scripts/engine_bench.py) and the tests build it here."""
    import flax.linen as fnn
    import jax.numpy as jnp
    import torch
    from torch import nn

    from examples.transformer import FlaxAttention, TorchAttention

    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.attn, self.ln2 = nn.LayerNorm(dim), TorchAttention(dim, heads), nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class TorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
            self.blocks = nn.ModuleList(TorchBlock() for _ in range(depth))
            self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

        def forward(self, ids):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            for b in self.blocks:
                x = b(x)
            return self.head(self.ln(x))

    class FlaxBlock(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = x + FlaxAttention(dim, heads, name="attn")(fnn.LayerNorm(epsilon=1e-5, name="ln1")(x))
            h = fnn.Dense(4 * dim, name="mlp_0")(fnn.LayerNorm(epsilon=1e-5, name="ln2")(x))
            return x + fnn.Dense(dim, name="mlp_2")(fnn.gelu(h, approximate=False))

    class FlaxNet(fnn.Module):
        @fnn.compact
        def __call__(self, ids):
            x = fnn.Embed(vocab, dim, name="tok")(ids) + fnn.Embed(length, dim, name="pos")(jnp.arange(ids.shape[1]))
            for i in range(depth):
                x = FlaxBlock(name=f"blocks_{i}")(x)
            return fnn.Dense(num_classes, name="head")(fnn.LayerNorm(epsilon=1e-5, name="ln")(x))

    torch.manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return TorchNet(), FlaxNet(), ids
