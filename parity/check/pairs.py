"""What the parity engine compares: a torch module and a Flax module meant to compute the same
function, how weights move between them, their inputs and the loss their gradients come from.

``twin(cfg)`` is the pair of one built-in variant, ``modules(...)`` a user's pair; both move their
weights by one ``parity.convert.rules.WeightMap`` (derived for the twins, matched for users' pairs),
and the runners, statistics and judgement treat both alike.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import layout, training
from parity.check.config import Config
from parity.convert import rules, twins

if TYPE_CHECKING:
    import flax.linen as fnn
    import torch

    from parity.check.nnx import LinenView

# (inputs, target): the inputs as numpy arrays in torch's layout, the loss's target (labels for
# cross-entropy, a fixed random tensor or a tuple of them for the probe loss)
Batch = tuple[tuple[np.ndarray, ...], Any]
Mode = Callable[[bool], dict]  # train -> the keyword arguments that put the Flax module in that mode


def _train_kwarg(train: bool) -> dict:
    return {"train": train}


@dataclass
class Pair:
    name: str
    torch_module: Callable[[str], torch.nn.Module]  # dtype -> a fresh torch module (weights loaded after)
    flax_module: Callable[[str], fnn.Module | LinenView]  # dtype -> the Flax module
    weights: rules.WeightMap  # how each torch tensor moves to its Flax leaf and back
    counters: bool = False  # whether both sides count batches (num_batches_tracked)
    images: bool = True  # 4-D/5-D float inputs, outputs and activations move between NCHW and NHWC
    flax_mode: Mode = _train_kwarg
    loss: str = "cross_entropy"  # or "probe": sum(output * target), target a fixed random tensor
    input_names: tuple[str, ...] = ("x",)
    layer_shapes: dict[str, tuple] = field(default_factory=dict)  # Flax activation shapes, where known
    # torch module path -> the Flax axis of each torch dimension of its output, where the Flax side says
    # (a port knows): no guessing from shapes
    layer_layouts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def param_keys(self) -> set[str]:
        return self.weights.param_keys

    @property
    def stat_keys(self) -> set[str]:
        """torch names of the statistics Flax keeps (running mean and variance)."""
        return self.weights.stat_keys

    def to_flax(self, state_dict: Mapping[str, Any]) -> dict:
        """A torch state_dict (tensors or arrays) as Flax variables (numpy)."""
        return self.weights.to_flax({k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
                                     for k, v in state_dict.items() if k in self.weights.by_torch})

    def to_torch(self, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Flax variables (any subset, jax or numpy) in torch's layout, floats as float64."""
        import jax

        return {k: np.asarray(v, np.float64) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in self.weights.to_torch(jax.device_get(variables)).items()}

    def flax_layout(self, a: np.ndarray) -> np.ndarray:
        """A torch-side array in the Flax side's layout."""
        return layout.channels_last(a, self.images)

    def layer_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        """A torch activation in the Flax side's layout, by the shape of the Flax activation of the same
        name where known: as it is when equal (a LayerNorm applied channels-last in torch), channels
        moved last when that makes it equal (a Conv1d's (N, C, L))."""
        perm = self.layer_layouts.get(name)
        if perm is not None and len(perm) == a.ndim:
            return a.transpose(np.argsort(perm))  # Flax axis b holds torch dimension argsort(perm)[b]
        want = self.layer_shapes.get(name)
        image = self.flax_layout(a)
        # an image's channels move first: when they and the others are the same size, both readings
        # give the wanted shape, and a torch activation is an image far more often than channels-last
        if want is None or image.shape == want:
            return image
        if a.shape == want:
            return a
        moved = np.moveaxis(a, 1, -1) if a.ndim >= 3 else a
        return moved if moved.shape == want else a


def torch_eval(module: torch.nn.Module, args: tuple) -> Any:
    """``module``'s eval-mode outputs on ``args`` (no gradient); a ``ValueError`` naming the input shapes
    if it rejects them."""
    import torch

    try:
        with torch.no_grad():
            return module.eval()(*args)
    except Exception as e:
        raise ValueError(f"the torch module rejects inputs of shapes {[tuple(a.shape) for a in args]}: "
                         f"{type(e).__name__}: {e}") from e


def flax_args(inputs: tuple[np.ndarray, ...], images: bool) -> tuple[np.ndarray, ...]:
    """Torch-layout inputs as the Flax side takes them: float arrays channels-last, others as given."""
    return tuple(layout.channels_last(a, images) if np.issubdtype(a.dtype, np.floating) else a for a in inputs)


def twin(cfg: Config) -> Pair:
    """The built-in twins of ``cfg.name``."""
    ov = cfg.model_overrides

    def torch_module(dtype: str) -> torch.nn.Module:
        import torch

        import torchnets

        # built on the meta device: the runner loads every tensor (no twin has a non-persistent buffer),
        # and drawing VGG's 133M initial weights took seconds per run
        with torch.device("meta"):
            m = torchnets.build(cfg.name, **ov)
        return m.to(torch.float64 if dtype == "fp64" else torch.float32).to_empty(device="cpu")

    return Pair(cfg.name, torch_module, lambda dtype: training.flax_model(cfg.name, dtype, **ov),
                twins.twin_map(cfg.name, **ov), counters=True)


def flax_mode(module: fnn.Module | LinenView) -> Mode:
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


def sides(torch_module: object, flax_module: object) -> tuple[torch.nn.Module, fnn.Module | LinenView]:
    """The two modules of a user's pair, checked: a torch module, and a Linen module or an NNX module
    (seen through ``parity.check.nnx.LinenView``)."""
    import flax.linen as fnn
    import torch

    from parity.check import nnx

    if not isinstance(torch_module, torch.nn.Module):
        raise TypeError(f"the torch side must be a torch.nn.Module, got {type(torch_module).__name__}")
    if nnx.is_nnx(flax_module):
        flax_module = nnx.LinenView(flax_module)
    if not isinstance(flax_module, (fnn.Module, nnx.LinenView)):
        raise TypeError(f"the Flax side must be a flax.linen.Module or a flax.nnx.Module, got "
                        f"{type(flax_module).__name__}")
    return torch_module, flax_module


def modules(torch_module: torch.nn.Module, flax_module: fnn.Module | LinenView, inputs: tuple[np.ndarray, ...], *,
            key_map: rules.KeyMap | None = None, images: bool = True, mode: Mode | None = None,
            name: str = "pair", weight_map: rules.WeightMap | None = None,
            layer_layouts: Mapping[str, tuple[int, ...]] | None = None) -> Pair:
    """A user's pair (checked by ``sides``). Weights come from ``torch_module``; the Flax variables are
    found by ``init`` on ``inputs`` (moved to channels-last where ``images``)."""
    import jax
    import torch

    mode = mode or flax_mode(flax_module)
    fargs = flax_args(inputs, images)
    try:
        shapes = jax.eval_shape(lambda *a: flax_module.init(jax.random.key(0), *a, **mode(False)), *fargs)
    except Exception as e:
        raise ValueError(f"the Flax module rejects inputs of shapes {[a.shape for a in fargs]} "
                         f"({'channels-last' if images else 'as given'}): {type(e).__name__}: {e}") from e
    shapes = {k: v for k, v in shapes.items() if k != "intermediates"}
    extra = sorted(set(shapes) - {"params", "batch_stats"})
    if extra:
        raise ValueError(f"the Flax module has variable collections {extra}; only 'params' and 'batch_stats' "
                         "are supported")
    _, inter = jax.eval_shape(lambda v, *a: flax_module.apply(v, *a, **mode(False), capture_intermediates=True,
                                                              mutable=["intermediates"]), shapes, *fargs)
    layer_shapes = {rules.normalize(".".join(p[:-1])): tuple(v[0].shape)
                    for p, v in rules.flatten(inter["intermediates"]).items()
                    if p[-1] == "__call__" and len(p) > 1 and hasattr(v[0], "shape")}
    sd = torch_module.state_dict()
    flax_shapes = {k: tuple(v.shape) for k, v in rules.flatten(shapes).items()}
    if weight_map is None:
        wmap = rules.WeightMap.match({k: tuple(v.shape) for k, v in sd.items()}, rules.module_types(torch_module),
                                     flax_shapes, key_map)
    else:  # a map made for this pair (a port's): it must still cover both sides, shapes included
        wmap = weight_map
        rules.check_covers(wmap, {k: tuple(v.shape) for k, v in sd.items()}, flax_shapes)
    template = copy.deepcopy(torch_module).cpu()

    def torch_factory(dtype: str) -> torch.nn.Module:
        return copy.deepcopy(template).to(torch.float64 if dtype == "fp64" else torch.float32)

    return Pair(name, torch_factory, lambda dtype: flax_module, wmap, counters=bool(wmap.counter_keys),
                images=images, flax_mode=mode, loss="probe",
                input_names=tuple(f"input{i}" if len(inputs) > 1 else "x" for i in range(len(inputs))),
                layer_shapes=layer_shapes, layer_layouts=dict(layer_layouts or {}))
