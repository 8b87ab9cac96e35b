"""What the parity engine compares: a torch module and a Flax module meant to compute the same
function, how weights move between them, their inputs and the loss their gradients come from.

``twin(cfg)`` is the pair of one built-in variant (the converter moves its weights); ``modules(...)``
is a user's pair, whose weights move by ``parity.mapping``'s rules. The runners, statistics and
judgement treat both alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity import convert, mapping, training
from parity.config import Config

# (inputs, target): the inputs as numpy arrays in torch's layout, the loss's target
Batch = tuple[tuple[np.ndarray, ...], np.ndarray]


@dataclass
class Pair:
    name: str
    torch_module: Callable[[str], Any]  # dtype -> a fresh torch module in that dtype (weights loaded after)
    flax_module: Callable[[str], Any]  # dtype -> the Linen module
    to_flax: Callable[[Mapping[str, Any]], dict]  # torch state_dict -> Flax variables (numpy)
    to_torch: Callable[[Mapping[str, Any]], dict[str, np.ndarray]]  # Flax variables (any subset) -> torch layout
    param_keys: set[str]  # torch names of the parameters
    stat_keys: set[str]  # torch names of the statistics Flax keeps (running mean and variance)
    counters: bool = False  # whether both sides count batches (num_batches_tracked)
    images: bool = True  # 4-D float inputs, outputs and activations move between NCHW and NHWC
    flax_mode: Callable[[bool], dict] = field(default=lambda train: {"train": train})
    loss: str = "cross_entropy"  # or "probe": sum(output * target), target a fixed random tensor
    input_names: tuple[str, ...] = ("x",)

    layer_shapes: dict[str, tuple] = field(default_factory=dict)  # Flax activation shapes, where known

    def flax_layout(self, a: np.ndarray) -> np.ndarray:
        """A torch-side array in the Flax side's layout (``channels_last``)."""
        return channels_last(a, self.images)

    def layer_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        """A torch activation in the Flax side's layout, by the shape of the Flax activation of the same
        name where known: as it is when equal (a LayerNorm applied channels-last in torch), channels
        moved last when that makes it equal (a Conv1d's (N, C, L))."""
        want = self.layer_shapes.get(name)
        if want is None or a.shape == want:
            return self.flax_layout(a) if want is None else a
        moved = np.moveaxis(a, 1, -1) if a.ndim >= 3 else a
        return moved if moved.shape == want else a


def channels_last(a: np.ndarray, images: bool) -> np.ndarray:
    """With ``images``, a 4-D (image) or 5-D (volume) torch-layout array with its channels moved last."""
    return np.moveaxis(a, 1, -1) if images and np.ndim(a) in (4, 5) else a


def flax_args(inputs: tuple[np.ndarray, ...], images: bool) -> tuple[np.ndarray, ...]:
    """Torch-layout inputs as the Flax side takes them: float arrays ``channels_last``, others as given."""
    return tuple(channels_last(a, images) if np.issubdtype(a.dtype, np.floating) else a for a in inputs)


def twin(cfg: Config) -> Pair:
    """The built-in twins of ``cfg.name``."""
    ov = cfg.model_overrides
    want = convert.expected_state_dict(cfg.name, **ov)
    leaf = {k: k.rsplit(".", 1)[-1] for k in want}

    def torch_module(dtype: str) -> Any:
        import torch

        import torchnets

        return torchnets.build(cfg.name, **ov).to(torch.float64 if dtype == "fp64" else torch.float32)

    def to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        full = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
        sd = convert.flax_to_torch(full, cfg.name, strict=False, **ov)[0]
        return {k: v.double().numpy() for k, v in sd.items()}

    return Pair(cfg.name, torch_module, lambda dtype: training.flax_model(cfg.name, dtype, **ov),
                lambda sd: convert.torch_to_flax(sd, cfg.name, **ov), to_torch,
                {k for k, lf in leaf.items() if not lf.startswith(("running", "num_batches"))},
                {k for k, lf in leaf.items() if lf.startswith("running")}, counters=True)


def flax_mode(module: Any) -> Callable[[bool], dict]:
    """How ``module.__call__`` is told train or eval mode, read from its signature: ``train``,
    ``training`` or ``is_training`` (True in train mode), ``deterministic`` or
    ``use_running_average`` (False in train mode); none of these: no argument."""
    params = inspect.signature(type(module).__call__).parameters
    for name in ("train", "training", "is_training"):
        if name in params:
            return lambda train, name=name: {name: train}
    for name in ("deterministic", "use_running_average"):
        if name in params:
            return lambda train, name=name: {name: not train}
    return lambda train: {}


def modules(torch_module: Any, flax_module: Any, inputs: tuple[np.ndarray, ...], *,
            key_map: Mapping[str, str] | Callable[[str], str | None] | None = None, images: bool = True,
            mode: Callable[[bool], dict] | None = None, name: str = "pair") -> Pair:
    """A user's pair. Weights come from ``torch_module``; ``flax_module`` is a Linen module whose
    variables are found by ``init`` on ``inputs`` (moved to NHWC where ``images``)."""
    import copy

    import jax
    import torch

    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"the torch side must be a torch.nn.Module, got {type(torch_module).__name__}")
    import flax.linen as nn

    from parity import nnx

    if nnx.is_nnx(flax_module):
        flax_module = nnx.LinenView(flax_module)
    if not isinstance(flax_module, (nn.Module, nnx.LinenView)):
        raise TypeError(f"the Flax side must be a flax.linen.Module or a flax.nnx.Module, got "
                        f"{type(flax_module).__name__}")
    mode = mode or flax_mode(flax_module)
    fargs = flax_args(inputs, images)
    try:
        shapes = jax.eval_shape(lambda *a: flax_module.init(jax.random.key(0), *a, **mode(False)), *fargs)
    except Exception as e:
        raise ValueError(f"the Flax module rejects inputs of shapes {[a.shape for a in fargs]} "
                         f"({'NHWC' if images else 'as given'}): {type(e).__name__}: {e}") from e
    shapes = {k: v for k, v in shapes.items() if k != "intermediates"}
    _, inter = jax.eval_shape(lambda v, *a: flax_module.apply(v, *a, **mode(False), capture_intermediates=True,
                                                              mutable=["intermediates"]), shapes, *fargs)
    layer_shapes = {mapping.normalize(".".join(p[:-1])): tuple(v[0].shape)
                    for p, v in mapping.flatten(inter["intermediates"]).items()
                    if p[-1] == "__call__" and len(p) > 1 and hasattr(v[0], "shape")}
    extra = sorted(set(shapes) - {"params", "batch_stats"})
    if extra:
        raise ValueError(f"the Flax module has variable collections {extra}; only 'params' and 'batch_stats' "
                         "are supported")
    flat = {k: tuple(v.shape) for k, v in mapping.flatten(shapes).items()}
    sd = torch_module.state_dict()
    types = {n: type(m).__name__ for n, m in torch_module.named_modules()}
    wmap = mapping.WeightMap({k: tuple(v.shape) for k, v in sd.items()}, types, flat, key_map)
    template = copy.deepcopy(torch_module).cpu()
    buffers = {k for k, _ in torch_module.named_buffers()}

    def torch_factory(dtype: str) -> Any:
        return copy.deepcopy(template).to(torch.float64 if dtype == "fp64" else torch.float32)

    def to_flax(state_dict: Mapping[str, Any]) -> dict:
        return wmap.to_flax({k: v.detach().cpu().numpy() if hasattr(v, "detach") else v
                             for k, v in state_dict.items()})

    def to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float64) for k, v in wmap.to_torch(jax.device_get(variables)).items()}

    counters = {e.torch_key for e in wmap.entries if e.torch_key.endswith("num_batches_tracked")}
    return Pair(name, torch_factory, lambda dtype: flax_module, to_flax, to_torch, wmap.param_keys,
                {e.torch_key for e in wmap.entries if e.torch_key in buffers} - counters,
                counters=bool(counters), images=images, flax_mode=mode, loss="probe",
                input_names=tuple(f"input{i}" if len(inputs) > 1 else "x" for i in range(len(inputs))),
                layer_shapes=layer_shapes)
