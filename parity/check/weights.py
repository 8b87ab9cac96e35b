"""The weights and batches a parity check starts from: torchnets' seeded initialisation in float64
with BatchNorm drawn at random (or calibrated, for very deep nets), and one-ulp perturbations of it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import netspecs
from parity.check.config import Config


def randomize(state_dict: Mapping[str, Any], seed: int) -> OrderedDict:
    """BatchNorm affine and running statistics drawn at random: ones and zeros would hide a
    mean/var or scale/bias swap."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    out = OrderedDict()
    for k, v in state_dict.items():
        leaf = k.rsplit(".", 1)[-1]
        if v.dim() == 1 and leaf in ("weight", "running_var"):
            v = 0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)
        elif v.dim() == 1 and leaf in ("bias", "running_mean"):
            v = 0.4 * torch.rand(v.shape, generator=g, dtype=v.dtype) - 0.2
        elif leaf == "num_batches_tracked":
            v = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        out[k] = v.clone()
    return out


def make_batches(cfg: Config) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches of (x NCHW float64, labels int64), the same for both frameworks."""
    spec = netspecs.get(cfg.name, **cfg.model_overrides)
    rng = np.random.default_rng(cfg.seed)
    return [(rng.standard_normal((cfg.batch, spec.in_channels, cfg.size, cfg.size)),
             rng.integers(0, spec.num_classes, cfg.batch)) for _ in range(max(cfg.steps, 1))]


def calibrate(model: Any, x: np.ndarray, seed: int) -> OrderedDict:
    """float64 weights of ``model`` (a torch module, changed in place) whose running statistics are
    the batch statistics of ``x`` and whose BatchNorm affine is random within 10%: the mean/var and
    scale/bias still differ, so a swap still shows, and the statistics match the activations they
    normalise, so 600 blocks stay well conditioned (resnet1202's eval output: one-ulp spread 2e-14, measured)."""
    import torch

    model = model.double()
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
            m.weight.copy_(0.9 + 0.2 * torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype))
            m.bias.copy_(0.2 * torch.rand(m.bias.shape, generator=g, dtype=m.bias.dtype) - 0.1)
        model.train()(torch.from_numpy(x))
    for m in bns:
        m.momentum = 0.1
    return OrderedDict(model.state_dict())


def initial_weights(cfg: Config) -> OrderedDict:
    """torchnets' initialisation (seeded) in float64, BatchNorm randomized; very deep nets
    (parity.check.config.very_deep) calibrated on a batch that is not one of the checked ones."""
    import torch

    import torchnets

    torch.manual_seed(cfg.seed)
    model = torchnets.build(cfg.name, **cfg.model_overrides)
    if cfg.calibrates:
        spec = netspecs.get(cfg.name, **cfg.model_overrides)
        x = np.random.default_rng(cfg.seed + 1).standard_normal((cfg.batch, spec.in_channels, cfg.size, cfg.size))
        return calibrate(model, x, cfg.seed)
    sd = model.state_dict()
    return randomize(OrderedDict((k, v.double() if v.is_floating_point() else v) for k, v in sd.items()),
                     cfg.seed)


def perturbed(w: Mapping[str, Any], seed: int) -> OrderedDict:
    """Weights moved by about one ulp of their dtype each: an equally valid starting point."""
    import torch

    g = torch.Generator().manual_seed(10_000 + seed)
    return OrderedDict((k, v * (1 + torch.finfo(v.dtype).eps * torch.randn(v.shape, generator=g, dtype=v.dtype))
                        if v.is_floating_point() else v) for k, v in w.items())


@dataclass(frozen=True)
class Start:
    """The weights one run starts from, made each time a module loads them and not held in between:
    ``base`` (cast to float32 when ``fp32``), moved by one ulp with ``seed`` (``perturbed``) unless
    ``seed`` is None. A run loads its start twice (eval and SGD, then AdamW) and a float64 copy held
    through it would be one more copy of the model beside its optimizer's state (docs/parity.md,
    "What a check holds")."""

    base: Mapping[str, Any]
    seed: int | None = None
    fp32: bool = False

    @property
    def held(self) -> bool:
        """Made once and held through its run: a float32 start is half a float64 copy, below the
        float64 runs' peak, and making it costs seconds on a VGG."""
        return self.fp32

    def weights(self) -> Mapping[str, Any]:
        w = self.base
        if self.fp32:
            w = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in w.items())
        return w if self.seed is None else perturbed(w, self.seed)


def weights_of(start: Start | Mapping[str, Any]) -> Mapping[str, Any]:
    """A run's weights: a ``Start``'s, made now, or a state_dict as it is."""
    return start.weights() if isinstance(start, Start) else start


def for_run(start: Start | Mapping[str, Any]) -> Start | Mapping[str, Any]:
    """What a run keeps of its start: the weights themselves where the start is ``held``."""
    return start.weights() if isinstance(start, Start) and start.held else start
