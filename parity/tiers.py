"""Cost tiers of the variants, decided once: calibration, jit-or-not, the CLI's default trajectory
length and the test suite's markers all derive from this table (docs/parity.md, "Cost tiers")."""

from __future__ import annotations

from parity import flops, specs

# Residual blocks above which a net is "very deep" (resnet1202, plain1202: 600 blocks). Why 200:
# - random BatchNorm statistics compound through 600 blocks to an eval output of 1.6e122 in float64
#   (NaN in float32), while resnet152's 50 and plain110's 54 blocks are fine: very deep nets get
#   calibrated statistics (weights.calibrate);
# - XLA was still compiling resnet1202's float64 gradient after 20 min on 2 cores: very deep nets run
#   the Flax side op by op (the same kernels, unfused), and without optimizer trajectories unless
#   asked (each op-by-op step of resnet1202 takes about 20 s).
VERY_DEEP_BLOCKS = 200
# Above either of these a net is "heavy": its tests run in the slow tier.
DEEP_BLOCKS = 40
HEAVY_PARAMS = 30_000_000

# Heavy nets kept in the default test tier anyway, one of each kind the others do not cover
# (VGG with BatchNorm, VGG with LRN).
DEFAULT_ANYWAY = frozenset({"vgg11_bn", "vgg11_lrn"})

# The full parity check (every quantity, 5 samples, trajectories) costs minutes per net on 2 cores;
# these run it in the default and slow test tiers (CI), every other variant in the huge tier. Why so
# few in CI: one full check per block kind keeps `.ci/run` under 35 min on 2 cores; the other kinds
# get gradients and an optimizer step in CI (GRADIENT_CHECK).
FULL_CHECK = {"default": frozenset({"resnet20", "plain20"}),
              "slow": frozenset({"resnet18"})}
# Gradients, the input gradient and one SGD step at 32x32, batch 2, in CI: a bottleneck net with
# projection shortcuts (resnet50, plus an AdamW step and a one-step trajectory), a VGG with LRN (max
# pools, the flatten permutation, LRN's gradient) and a grouped-convolution net.
GRADIENT_CHECK = {"default": frozenset({"resnet50", "vgg11_lrn"}), "slow": frozenset({"resnext50_32x4d"})}


def blocks(name: str, **overrides) -> int:
    """Residual blocks (0 for VGG)."""
    spec = specs.get(name, **overrides)
    return sum(spec.depths) if isinstance(spec, specs.ResNetSpec) else 0


def very_deep(name: str, **overrides) -> bool:
    """Calibrated statistics, Flax op by op, no trajectory by default (see VERY_DEEP_BLOCKS)."""
    return blocks(name, **overrides) > VERY_DEEP_BLOCKS


def heavy(name: str) -> bool:
    """Over DEEP_BLOCKS blocks or HEAVY_PARAMS weights."""
    return blocks(name) > DEEP_BLOCKS or flops.count(specs.get(name)).params > HEAVY_PARAMS


def suite_tier(name: str) -> str:
    """"default" or "slow": where a per-variant test of ``name`` runs."""
    return "slow" if heavy(name) and name not in DEFAULT_ANYWAY else "default"


def check_suite_tier(name: str) -> str:
    """"default", "slow" or "huge": where the full parity check of ``name`` runs."""
    return next((t for t, names in FULL_CHECK.items() if name in names), "huge")
