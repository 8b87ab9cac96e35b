"""torchvision's initialisation scheme as expected distributions per state_dict key."""

from __future__ import annotations

import math

import numpy as np

import netspecs


def expected(key: str, shape: tuple[int, ...], spec: netspecs.Spec) -> tuple[str, float]:
    """(distribution, parameter) for one torch key: ('normal', std), ('uniform', bound), ('const', v)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean" or (leaf == "bias" and len(shape) == 1 and "fc" not in key
                                  and not (isinstance(spec, netspecs.ResNetSpec) and key.startswith("fc"))):
        return "const", 0.0
    if leaf == "running_var":
        return "const", 1.0
    if len(shape) == 4:  # kaiming normal, fan_out = O * kh * kw (groups ignored, as torch)
        return "normal", math.sqrt(2.0 / (shape[0] * shape[2] * shape[3]))
    if len(shape) == 2:
        if isinstance(spec, netspecs.VGGSpec):
            return "normal", 0.01
        return "uniform", 1.0 / math.sqrt(shape[1])
    if leaf == "bias" and key.startswith("fc"):
        return "uniform", 1.0 / math.sqrt(spec.last_channels)
    # BatchNorm scale: 1, or 0 on each block's last BN with zero_init_residual.
    last = isinstance(spec, netspecs.ResNetSpec) and spec.zero_init_residual and (
        (spec.block == "basic" and ".bn2." in key) or (spec.block == "bottleneck" and ".bn3." in key))
    return "const", 0.0 if last else 1.0


def check(key: str, a: np.ndarray, spec: netspecs.Spec) -> None:
    """Assert that ``a`` (torch layout) looks drawn from its expected distribution."""
    kind, p = expected(key, a.shape, spec)
    a = np.asarray(a, np.float64).ravel()
    n = a.size
    if kind == "const":
        assert np.all(a == p), f"{key}: expected all {p}"
        return
    if kind == "uniform":
        assert np.abs(a).max() <= p * (1 + 1e-6), f"{key}: outside U(-{p}, {p})"
        p = p / math.sqrt(3)
    # mean and std within 6 standard errors
    assert abs(a.mean()) < 6 * p / math.sqrt(n), f"{key}: mean {a.mean()} not ~0"
    assert abs(a.std() / p - 1) < 6 / math.sqrt(2 * n) + 1e-3, f"{key}: std {a.std()} != {p}"
    if kind == "normal" and n > 20000:
        # untruncated: about 4.55% beyond 2 sigma (a 2-sigma truncated normal has none)
        tail = np.mean(np.abs(a) > 2 * p)
        assert 0.035 < tail < 0.056, f"{key}: {tail:.4f} beyond 2 sigma; truncated init?"
