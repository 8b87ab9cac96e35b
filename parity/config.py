"""What a parity check runs (model, inputs, optimizers, device, precision) and how closely it judges."""

from __future__ import annotations

from dataclasses import dataclass, field

from parity import specs, tiers, training

STRUCT_RTOL = 1e-10  # the float64 twins' largest allowed relative disagreement (docs/parity.md)


@dataclass(frozen=True)
class Tolerance:
    factor: float  # Flax may be this many times further from float64 than torch is
    floor: float  # ... plus this, relative to the quantity's scale


# (device, dtype, precision) -> tolerance of the precision step. Why these numbers: float32
# rounding of one op is ~6e-8, a forward pass accumulates it to 1e-7..1e-5 of the output scale;
# TF32 (10-bit mantissa) and bfloat16 (8-bit) are ~1e-3 and ~1e-2 per op.
TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    ("cpu", "fp32", "highest"): Tolerance(3.0, 1e-5),
    ("cpu", "fp32", "default"): Tolerance(3.0, 1e-5),
    ("cpu", "bf16", "highest"): Tolerance(3.0, 3e-2),
    ("cpu", "bf16", "default"): Tolerance(3.0, 3e-2),
    ("gpu", "fp32", "highest"): Tolerance(3.0, 1e-5),
    ("gpu", "fp32", "default"): Tolerance(3.0, 5e-3),
    ("gpu", "bf16", "highest"): Tolerance(3.0, 3e-2),
    ("gpu", "bf16", "default"): Tolerance(3.0, 3e-2),
}


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
    # torch float64 runs from 1-ulp starts that measure trajectory chaos, made only while needed.
    # Why up to 8: a drifting float64 trajectory can cross a kink (ReLU or max-pool) and jump 1e4x
    # (plain18, SGD step 9: 2 of 14 torch runs, 4 of 5 Flax runs), a lottery that 3 runs can miss.
    chaos_samples: int = 8

    def __post_init__(self):
        if self.name is not None:
            spec = specs.get(self.name, **self.model_overrides)
            if self.size is None:
                self.size = max(32, spec.min_size)
        if (self.device, self.dtype, self.precision) not in TOLERANCES:
            raise ValueError(f"no tolerance for device={self.device!r} dtype={self.dtype!r} "
                             f"precision={self.precision!r}; known: {sorted(TOLERANCES)}")

    @property
    def model_overrides(self) -> dict:
        return training.overrides(self.name, **self.overrides) if self.name is not None else {}

    @property
    def trajectories(self) -> bool:
        return self.steps > 0

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCES[(self.device, self.dtype, self.precision)]

    @property
    def very_deep(self) -> bool:
        return self.name is not None and tiers.very_deep(self.name, **self.model_overrides)

    @property
    def calibrates(self) -> bool:
        """Running statistics calibrated on a separate batch instead of drawn at random (parity.tiers)."""
        return self.very_deep

    @property
    def jits(self) -> bool:
        """The Flax side under jax.jit; op by op for very deep nets (parity.tiers)."""
        return not self.very_deep

    def optimizers(self) -> dict[str, training.Optimizer]:
        """The optimizers a check runs: SGD alone without trajectories, then AdamW too."""
        opts = {"sgd": training.SGD(**self.sgd), "adamw": training.AdamW(**self.adamw)}
        return opts if self.trajectories else {"sgd": opts["sgd"]}
