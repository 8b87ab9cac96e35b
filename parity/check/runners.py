"""The runs a parity check compares: every quantity of one side of a pair (parity.check.pairs), computed
through the training engine (parity.training) and streamed as (quantity, value), float64 numpy,
parameters in torch's layout and names, activations and input gradients in Flax's layout."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import training
from parity.check.config import Config
from parity.check.pairs import Batch, Pair
from parity.convert.rules import normalize

if TYPE_CHECKING:
    import jax
    import torch

Stream = Iterator[tuple[str, Any]]  # (quantity, value) in the order a run computes them


@dataclass
class Quantities:
    """Every quantity of one run, float64 numpy. Trajectory quantities are None for a run without
    trajectories; counters are empty for pairs that do not count batches."""

    eval: dict[str, np.ndarray]  # eval-mode outputs
    layers: OrderedDict[str, np.ndarray]  # each submodule's eval-mode output, forward order
    train: dict[str, np.ndarray]  # train-mode outputs of the first batch
    stats: dict[str, np.ndarray]  # running statistics after that step
    counters: dict[str, int]  # num_batches_tracked
    grads: dict[str, np.ndarray]  # gradient of the loss for every parameter
    input_grad: dict[str, np.ndarray]  # gradient for every float input
    sgd_step1: dict[str, np.ndarray]  # parameters after one SGD step
    adamw_step1: dict[str, np.ndarray] | None = None
    sgd_losses: dict[str, np.ndarray] | None = None  # {"loss": per-step losses}
    adamw_losses: dict[str, np.ndarray] | None = None
    sgd_final: dict[str, np.ndarray] | None = None  # parameters and statistics after the trajectory
    adamw_final: dict[str, np.ndarray] | None = None

    @classmethod
    def collect(cls, stream: Stream) -> Quantities:
        return cls(**dict(stream))

    def __getitem__(self, q: str) -> Any:
        return getattr(self, q)


def _outputs(out: Any) -> list:  # one output or a tuple or list of them
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_names(n: int) -> list[str]:
    return ["logits"] if n == 1 else [f"output{i}" for i in range(n)]


# --------------------------------------------------------------------------- torch


def run_torch(pair: Pair, cfg: Config, weights: Mapping[str, torch.Tensor], batches: list[Batch], dtype: str,
              device: str) -> Stream:
    """Every quantity from the torch side (consume it inside ``torch_precision``)."""
    import torch

    def np64(t: torch.Tensor) -> np.ndarray:
        # a copy: a float64 CPU tensor would otherwise share memory with the live buffer
        return t.detach().to("cpu", torch.float64).numpy().copy()

    def fresh() -> torch.nn.Module:
        m = pair.torch_module(dtype)
        m.load_state_dict(training.with_versions(weights, m))  # after the cast: loading first would round
        return m.to(training.torch_device(device))

    def args(batch: Batch, grad: bool = False) -> tuple:
        out = []
        for a in batch[0]:
            if np.issubdtype(a.dtype, np.floating):
                out.append(training.torch_inputs(a, dtype, device).requires_grad_(grad))
            else:
                out.append(torch.from_numpy(a).to(training.torch_device(device)))
        return tuple(out)

    def target(batch: Batch) -> torch.Tensor | tuple[torch.Tensor, ...]:
        def one(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.asarray(a)).to(training.torch_device(device))
            return t if pair.loss == "cross_entropy" else t.to(torch.float64 if dtype == "fp64" else torch.float32)
        return tuple(map(one, batch[1])) if isinstance(batch[1], tuple) else one(batch[1])

    def flax_layout(outs: Any) -> dict[str, np.ndarray]:
        outs = _outputs(outs)
        return dict(zip(output_names(len(outs)), (pair.flax_layout(np64(o)) for o in outs), strict=True))

    model = fresh().eval()
    acts: OrderedDict[str, np.ndarray] = OrderedDict()

    def hook(name):
        def f(_m, _i, o):
            if name not in acts and isinstance(o, torch.Tensor):
                acts[name] = np64(o)
        return f

    handles = [m.register_forward_hook(hook(normalize(n))) for n, m in model.named_modules() if n]
    yield "eval", flax_layout(training.torch_eval_step(model, args(batches[0]), dtype))
    for h in handles:
        h.remove()
    yield "layers", OrderedDict((k, pair.layer_layout(k, v)) for k, v in acts.items())

    for opt_name, opt in cfg.optimizers().items():
        model = fresh().train()
        params = dict(model.named_parameters())
        optimizer = training.torch_optimizer(opt, params.values())
        losses, grads = [], {}
        for step, batch in enumerate(batches if cfg.trajectories else batches[:1]):
            first = step == 0 and opt_name == "sgd"
            # the input gradient where every input is float (token ids have none), as on the Flax side
            xs = args(batch, grad=first and all(np.issubdtype(a.dtype, np.floating) for a in batch[0]))

            def read(xs=xs, grads=grads, params=params):
                grads.update({k: np64(p.grad) for k, p in params.items()})
                grads.update({f"input:{n}": pair.flax_layout(np64(x.grad))
                              for n, x in zip(pair.input_names, xs, strict=True) if x.grad is not None})

            loss, out = training.torch_train_step(model, optimizer, xs, target(batch), dtype,
                                                  before_update=read if first else None,
                                                  loss=training.probe_loss_torch if pair.loss == "probe" else None)
            losses.append(loss.item())
            if first:
                sd = model.state_dict()
                yield "train", flax_layout(out)
                yield "stats", {k: np64(sd[k]) for k in sd if k in pair.stat_keys}
                yield "counters", {k: int(v) for k, v in sd.items() if "num_batches" in k} if pair.counters else {}
                yield "input_grad", {k.split(":", 1)[1]: grads.pop(k) for k in list(grads) if k.startswith("input:")}
                yield "grads", grads
            if step == 0:
                yield f"{opt_name}_step1", {k: np64(p) for k, p in params.items()}
        if cfg.trajectories:
            sd = model.state_dict()
            yield f"{opt_name}_losses", {"loss": np.array(losses)}
            yield f"{opt_name}_final", {k: np64(sd[k]) for k in sd if k in pair.param_keys | pair.stat_keys}


# --------------------------------------------------------------------------- Flax


def flax_runner(pair: Pair, cfg: Config, dtype: str, device: str) -> Callable[[Mapping[str, torch.Tensor], list[Batch]],
                                                                                Stream]:
    """``run(weights, batches)``: every quantity from the Flax side (consume it inside
    ``jax_precision``). The compiled functions are made once, so further runs (perturbed weights)
    reuse them; very deep nets run op by op (parity.check.config.very_deep)."""
    import jax
    import jax.numpy as jnp

    dev = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    model = pair.flax_module(dtype)
    fdtype = jnp.float64 if dtype == "fp64" else jnp.float32

    def np64(a) -> np.ndarray:
        return np.asarray(jax.device_get(a)).astype(np.float64)

    def args(batch: Batch) -> tuple:
        return tuple(jax.device_put(jnp.asarray(pair.flax_layout(a), fdtype) if np.issubdtype(a.dtype, np.floating)
                                    else jnp.asarray(a), dev) for a in batch[0])

    def target(batch: Batch) -> jax.Array | tuple[jax.Array, ...]:
        def one(t: np.ndarray) -> jax.Array:
            return jnp.asarray(t) if pair.loss == "cross_entropy" else jnp.asarray(pair.flax_layout(t), fdtype)
        return tuple(map(one, batch[1])) if isinstance(batch[1], tuple) else one(batch[1])

    def outputs(out: Any) -> dict[str, np.ndarray]:
        outs = _outputs(out)
        return dict(zip(output_names(len(outs)), map(np64, outs), strict=True))

    jit = jax.jit if cfg.jits else (lambda f: f)
    evaluate = jit(training.flax_eval_step(model, capture=True, mode=pair.flax_mode))
    txs = {k: training.optax_optimizer(opt) for k, opt in cfg.optimizers().items()}
    loss = training.probe_loss_flax if pair.loss == "probe" else None

    def step_fn(opt_name: str, input_grad: bool):
        return jit(training.flax_train_step(model, txs[opt_name], input_grad=input_grad, loss=loss,
                                            mode=pair.flax_mode))

    steps: dict = {}

    def run(weights: Mapping[str, torch.Tensor], batches: list[Batch]) -> Stream:
        variables = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, fdtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a),
            pair.to_flax(weights))
        variables = jax.device_put(variables, dev)
        logits, inter = evaluate(variables["params"], variables.get("batch_stats", {}), args(batches[0]))
        yield "eval", outputs(logits)
        yield "layers", OrderedDict((normalize(".".join(path)), np64(val))
                                    for path, val in _flat_intermediates(inter))
        grad_inputs = all(np.issubdtype(a.dtype, np.floating) for a in batches[0][0])
        for opt_name, tx in txs.items():
            state = training.flax_state(variables, tx)
            losses = []
            for step, batch in enumerate(batches if cfg.trajectories else batches[:1]):
                first = step == 0 and opt_name == "sgd"
                key = (opt_name, first and grad_inputs)
                if key not in steps:
                    steps[key] = step_fn(*key)
                state, out = steps[key](state, args(batch), target(batch))
                losses.append(float(out.loss))
                if first:
                    yield "train", outputs(out.logits)
                    stats = pair.to_torch({"batch_stats": state.batch_stats})
                    yield "stats", {k: v for k, v in stats.items() if k in pair.stat_keys}
                    yield "counters", ({k: int(v) for k, v in stats.items() if "num_batches" in k}
                                       if pair.counters else {})
                    yield "input_grad", ({n: np64(g) for n, g in zip(pair.input_names, out.input_grad, strict=True)}
                                         if out.input_grad is not None else {})
                    yield "grads", {k: v for k, v in pair.to_torch({"params": out.grads}).items()
                                    if k in pair.param_keys}
                if step == 0:
                    yield f"{opt_name}_step1", {k: v for k, v in pair.to_torch({"params": state.params}).items()
                                                if k in pair.param_keys}
            if cfg.trajectories:
                yield f"{opt_name}_losses", {"loss": np.array(losses)}
                full = pair.to_torch({"params": state.params, "batch_stats": state.batch_stats})
                yield f"{opt_name}_final", {k: v for k, v in full.items() if k in pair.param_keys | pair.stat_keys}

    return run


def _flat_intermediates(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(module path, output) for every captured ``__call__`` that returned one array (as torch's hooks
    keep only tensor outputs); the root's own output excluded."""
    for k, v in tree.items():
        if k == "__call__":
            if path and hasattr(v[0], "shape"):
                yield path, v[0]
        else:
            yield from _flat_intermediates(v, (*path, k))
