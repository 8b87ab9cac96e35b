"""How closely a parity check judges: the float64 structure bound and the working-dtype tolerances
(docs/parity.md, "Two steps")."""

from __future__ import annotations

from dataclasses import dataclass

STRUCT_RTOL = 1e-10  # the float64 twins' largest allowed relative disagreement


@dataclass(frozen=True)
class Tolerance:
    factor: float  # Flax may be this many times further from float64 than torch is
    floor: float  # ... plus this, relative to the quantity's scale


# (device, dtype, precision) -> tolerance of the precision step. float32 rounding of one op is ~6e-8
# and a forward pass accumulates it to 1e-7..1e-5 of the output scale; TF32 (10-bit mantissa) and
# bfloat16 (8-bit) are ~1e-3 and ~1e-2 per op.
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


def tolerance(device: str, dtype: str, precision: str) -> Tolerance:
    """The tolerance for a run; a combination without one is refused, naming the known ones."""
    key = (device, dtype, precision)
    if key not in TOLERANCES:
        raise ValueError(f"no tolerance for device={device!r} dtype={dtype!r} precision={precision!r}; "
                         f"known: {sorted(TOLERANCES)}")
    return TOLERANCES[key]
