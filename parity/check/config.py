"""What one parity check runs: model, inputs, optimizers, device, precision, samples; and what a
variant's size decides about it (docs/parity.md, "Cost tiers")."""

from __future__ import annotations

from dataclasses import dataclass, field

import netspecs
from parity import training
from parity.check.tolerances import Tolerance, tolerance

# Above this many residual blocks a net is "very deep" (resnet1202, plain1202: 600 blocks): its
# running statistics are calibrated (random ones compound to overflow), its Flax side runs op by op
# (XLA's compile of its float64 gradient does not finish in useful time) and, unless asked, it gets
# no trajectory (docs/parity.md, "Cost tiers").
VERY_DEEP_BLOCKS = 200


def blocks(name: str, **overrides: object) -> int:
    """Residual blocks of ``name`` (0 for VGG)."""
    spec = netspecs.get(name, **overrides)
    return sum(spec.depths) if isinstance(spec, netspecs.ResNetSpec) else 0


def very_deep(name: str, **overrides: object) -> bool:
    """More than ``VERY_DEEP_BLOCKS`` residual blocks."""
    return blocks(name, **overrides) > VERY_DEEP_BLOCKS


@dataclass
class Config:
    """What one check runs: model, inputs, optimizers, device and precision."""

    name: str | None = None  # a built-in variant; None for a user's pair (check_pair)
    overrides: dict = field(default_factory=dict)
    batch: int = 8
    size: int | None = None  # default: 32 (64 for VGG would cost more and test nothing new)
    steps: int = 10  # optimizer trajectory length; 0: eval, train, grads and layers only
    seed: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    precision: str = "highest"
    sgd: dict = field(default_factory=lambda: dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4))
    adamw: dict = field(default_factory=lambda: dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2))
    samples: int = 5  # working-dtype runs per framework: exact weights + 1-ulp perturbations
    # torch float64 runs from 1-ulp starts that measure trajectory chaos, made only while a trajectory
    # fails the bound (a drifting float64 trajectory can cross a kink and jump: docs/parity.md)
    chaos_samples: int = 8

    def __post_init__(self) -> None:
        if self.name is not None:
            spec = netspecs.get(self.name, **self.model_overrides)
            if self.size is None:
                self.size = max(32, spec.min_size)
            elif isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < spec.min_size:
                raise ValueError(f"size: {self.name} takes inputs of at least {spec.min_size}x{spec.min_size}, "
                                 f"got {self.size!r}")
        for what, value in (("batch", self.batch), ("samples", self.samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what}: expected a positive int, got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps: expected an int >= 0, got {self.steps!r}")
        tolerance(self.device, self.dtype, self.precision)  # refused here when there is none

    @property
    def model_overrides(self) -> dict:
        return training.overrides(self.name, **self.overrides) if self.name is not None else {}

    @property
    def trajectories(self) -> bool:
        return self.steps > 0

    @property
    def tolerance(self) -> Tolerance:
        return tolerance(self.device, self.dtype, self.precision)

    @property
    def very_deep(self) -> bool:
        return self.name is not None and very_deep(self.name, **self.model_overrides)

    @property
    def calibrates(self) -> bool:
        """Running statistics calibrated on a separate batch instead of drawn at random."""
        return self.very_deep

    @property
    def jits(self) -> bool:
        """The Flax side under jax.jit; op by op for very deep nets."""
        return not self.very_deep

    def optimizers(self) -> dict[str, training.Optimizer]:
        """The optimizers a check runs: SGD alone without trajectories, then AdamW too."""
        opts = {"sgd": training.SGD(**self.sgd), "adamw": training.AdamW(**self.adamw)}
        return opts if self.trajectories else {"sgd": opts["sgd"]}
