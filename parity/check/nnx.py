"""Flax NNX: the twins as NNX modules, their state to and from torch state_dicts, and any NNX module
seen through Linen's functional interface so that ``check_pair`` accepts it.

The NNX twins are the Linen twins inside ``nnx.bridge.ToNNX`` (the same parameters and names), put in
train or eval mode as every NNX module is: ``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

import netspecs
from parity.convert import twins

if TYPE_CHECKING:
    import jax
    import torch
    from flax import nnx

    Tree = Any  # nested dicts of arrays


def _twin_class() -> type:
    from flax.nnx import bridge

    class NNXTwin(bridge.ToNNX):
        """A Linen twin as an NNX module: ``model(x)``, train mode after ``model.train()`` (batch
        statistics used and the running ones updated in place), eval mode after ``model.eval()``."""

        # NNX's train()/eval() set ``use_running_average`` where a module has it; stored under ToNNX's
        # own prefix, which ToNNX does not take for a Linen variable
        @property
        def use_running_average(self) -> bool:
            return self.to_nnx__use_running_average

        @use_running_average.setter
        def use_running_average(self, value: bool) -> None:
            self.to_nnx__use_running_average = value

        def __call__(self, x: jax.Array) -> jax.Array:
            train = not self.use_running_average
            return super().__call__(x, train=train, mutable=["batch_stats"] if train else False)

    return NNXTwin


def twin(name: str, *, seed: int = 0, **overrides: object) -> nnx.Module:
    """The Flax twin of ``name`` as an initialised NNX module, in eval mode."""
    import jax.numpy as jnp
    from flax import nnx
    from flax.nnx import bridge

    import jaxnets

    spec = netspecs.get(name, **overrides)
    model = _twin_class()(jaxnets.build(name, **overrides), rngs=nnx.Rngs(seed))
    model.use_running_average = True
    bridge.lazy_init(model, jnp.zeros((1, spec.min_size, spec.min_size, spec.in_channels)))
    return model


def variables(model: nnx.Module) -> dict:
    """``{'params', 'batch_stats'}`` of an NNX module as nested dicts (keys as strings)."""
    from flax import nnx

    out = {"params": _str_keys(_pure(nnx.state(model, nnx.Param)))}
    stats = _str_keys(_pure(nnx.state(model, nnx.BatchStat)))
    return {**out, "batch_stats": stats} if stats else out


def _pure(state: Any) -> dict:
    """An NNX state as nested dicts of arrays (``nnx.to_pure_dict`` where flax has it: State's own
    method is deprecated from flax 0.12)."""
    from flax import nnx

    return nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()


def _replace(state: Any, pure: dict, replace_fn: Callable | None = None) -> None:
    from flax import nnx

    if hasattr(nnx, "replace_by_pure_dict"):
        nnx.replace_by_pure_dict(state, pure, replace_fn)
    else:
        state.replace_by_pure_dict(pure, replace_fn)


def _str_keys(tree: Tree) -> Tree:
    return {str(k): _str_keys(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _like(tree: Tree, template: Tree) -> Tree:
    """``tree`` (string keys) with ``template``'s key types (NNX lists index by int)."""
    if not isinstance(template, Mapping):
        return tree
    return {k: _like(tree[str(k)], v) for k, v in template.items()}


def load(model: nnx.Module, variables: Mapping[str, Tree]) -> None:
    """Set an NNX module's parameters and statistics from Flax variables (in place)."""
    import jax.numpy as jnp
    from flax import nnx

    for kind, coll in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        if coll not in variables:
            continue
        state = nnx.state(model, kind)
        _replace(state, _like(variables[coll], _pure(state)),
                                   replace_fn=lambda old, new: old.replace(jnp.asarray(new, _value(old).dtype)))
        nnx.update(model, state)


def _value(var: nnx.Variable) -> jax.Array:
    return var.get_value() if hasattr(var, "get_value") else var.value  # .value is deprecated from flax 0.12


def torch_to_nnx(state_dict: Mapping[str, torch.Tensor], model: nnx.Module, name: str,
                 **overrides: object) -> nnx.Module:
    """``model`` (an NNX twin of ``name``) holding a torch state_dict's weights; returned for chaining."""
    load(model, twins.torch_to_flax(state_dict, name, **overrides))
    return model


def nnx_to_torch(model: nnx.Module, name: str, **overrides: object) -> dict[str, torch.Tensor]:
    """The torch state_dict of an NNX twin of ``name``."""
    return twins.flax_to_torch({k: _np(v) for k, v in variables(model).items()}, name, **overrides)


def _np(tree: Tree) -> Tree:
    return {k: _np(v) for k, v in tree.items()} if isinstance(tree, Mapping) else np.asarray(tree)


def is_nnx(module: object) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(module, nnx.Module)


class LinenView:
    """An NNX module seen through Linen's functional interface (``init``/``apply`` on
    ``{'params', 'batch_stats'}``, ``mutable``, ``capture_intermediates``), so that the training
    engine and the runners treat it as a Linen module. Train or eval mode: ``train=``."""

    def __init__(self, module: nnx.Module):
        from flax import nnx

        self.graphdef, self._params, self._stats, self._rest = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        self.module_type = type(module)

    def __call__(self, *args: jax.Array, train: bool = False) -> Any:  # the signature pairs.flax_mode reads
        raise TypeError("a LinenView is called through apply()")

    def module(self) -> nnx.Module:
        """A fresh copy of the NNX module, in the state it was viewed in."""
        from flax import nnx

        return nnx.merge(self.graphdef, self._params, self._stats, self._rest, copy=True)

    def init(self, _rng: jax.Array, *args: jax.Array, **_mode: bool) -> dict:
        return variables(self.module())

    def apply(self, variables_: Mapping[str, Tree], *args: jax.Array, train: bool = False,
              mutable: bool | list[str] = False,
              capture_intermediates: bool = False) -> Any:
        import jax
        from flax import nnx

        params = jax.tree_util.tree_map(lambda v: v, self._params)
        _replace(params, _like(variables_["params"], _pure(params)))
        stats = jax.tree_util.tree_map(lambda v: v, self._stats)
        if variables_.get("batch_stats"):
            _replace(stats, _like(variables_["batch_stats"], _pure(stats)))
        model = nnx.merge(self.graphdef, params, stats, self._rest, copy=True)
        if any(getattr(v, "dtype", None) == np.float64 for v in jax.tree_util.tree_leaves(variables_["params"])):
            _unpin_dtypes(model)
        model.train() if train else model.eval()
        captured: dict = {}
        with _capture(model, captured) if capture_intermediates else nullcontext():
            out = model(*args)
        if mutable is False:
            return out
        updates: dict = {}
        if "batch_stats" in (mutable if isinstance(mutable, (list, tuple)) else [mutable]):
            updates["batch_stats"] = _str_keys(_pure(nnx.state(model, nnx.BatchStat)))
        if capture_intermediates:
            updates["intermediates"] = captured
        return out, updates


def _unpin_dtypes(model: nnx.Module) -> None:
    """For the float64 run: a layer that fixed its compute dtype to its parameters' at construction
    (``nnx.Embed``: ``dtype or param_dtype``) follows the parameters it is given instead."""
    from flax import nnx

    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Module) and getattr(m, "dtype", None) is not None \
                and m.dtype == getattr(m, "param_dtype", object()):
            m.dtype = None


@contextmanager
def _capture(model: nnx.Module, into: dict) -> Iterator[None]:
    """Every submodule's output, as Linen's capture_intermediates nests them ({path...: {'__call__': (y,)}}):
    each submodule class's ``__call__`` wrapped for the duration (NNX has no method interception)."""
    from flax import nnx

    paths = {id(m): tuple(str(p) for p in path) for path, m in nnx.iter_graph(model)
             if isinstance(m, nnx.Module) and path}
    classes = {type(m) for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
    originals = {c: c.__call__ for c in classes}

    def wrap(original: Callable) -> Callable:
        def call(self, *a, **kw):
            y = original(self, *a, **kw)
            path = paths.get(id(self))
            if path:
                node = into
                for p in path:
                    node = node.setdefault(p, {})
                node.setdefault("__call__", (y,))
            return y
        return call

    for c, f in originals.items():
        c.__call__ = wrap(f)
    try:
        yield
    finally:
        for c, f in originals.items():
            c.__call__ = f
