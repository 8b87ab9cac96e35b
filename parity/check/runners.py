"""The runs a parity check compares: every quantity of one side of a pair (parity.check.pairs), computed
through the training engine (parity.training) and streamed as (quantity, value), float64 numpy,
parameters in torch's layout and names, activations and input gradients in Flax's layout.

Parameter-sized quantities come as ``LiveTensors``, read from the live run one tensor at a time; a run
holds its model, its gradients while the backward pass needs them, its optimizer's state, and nothing
else of that size (docs/parity.md, "What a check holds")."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import training
from parity.check.config import Config
from parity.check.pairs import Batch, Pair
from parity.check.weights import Start, for_run, weights_of
from parity.convert import rules
from parity.convert.rules import normalize

if TYPE_CHECKING:
    import jax
    import torch

Stream = Iterator[tuple[str, Any]]  # (quantity, value) in the order a run computes them
# torch's runs step with its fused optimizers (training.torch_optimizer): a single-tensor step over a
# VGG's 133M weights is ~10 passes and temporaries, and was half of each torch run's time
FUSED_OPTIMIZERS = True


class LiveTensors(Mapping):
    """One quantity read one tensor at a time: key -> a fresh float64 array, made at each access from
    the live run and valid until the stream's next item. Nothing of the whole quantity is copied at
    once: a VGG's parameters are 1 GB in float64. ``fresh``: the reader may write over each array."""

    fresh = True

    def __init__(self, keys: Iterable[str], fetch: Callable[[str], np.ndarray],
                 rows: Callable[[str, int, int], np.ndarray | None] | None = None):
        self._keys = list(keys)
        self._set = set(self._keys)
        self._fetch = fetch
        self._rows = rows

    def rows(self, key: str, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` of ``self[key]`` (torch's layout, first axis), fresh, read from that part
        of the live tensor alone; None where they cannot be (read the tensor whole). A comparison in
        row blocks holds a few MB, not the whole tensor again: VGG's first classifier weight is 822 MB
        in float64, and its move from Flax's layout cost a second per read."""
        if key not in self._set:
            raise KeyError(key)
        return self._rows(key, start, stop) if self._rows is not None else None

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._set:
            raise KeyError(key)
        return self._fetch(key)

    def __contains__(self, key: object) -> bool:
        return key in self._set

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def release(self) -> None:
        """Let go of the live run (its reader is done): a finished model must not stay alive through
        the reader's last reference into the next one's run."""
        self._keys, self._set, self._fetch, self._rows = [], set(), None, None


def _once(quantity: str, tensors: LiveTensors) -> Stream:
    yield quantity, tensors
    tensors.release()


def _outputs(out: Any) -> list:  # one output or a tuple or list of them
    return list(out) if isinstance(out, (tuple, list)) else [out]


def output_names(n: int) -> list[str]:
    return ["logits"] if n == 1 else [f"output{i}" for i in range(n)]


# --------------------------------------------------------------------------- torch


def run_torch(pair: Pair, cfg: Config, weights: Start | Mapping[str, torch.Tensor], batches: list[Batch], dtype: str,
              device: str) -> Stream:
    """Every quantity from the torch side (consume it inside ``torch_precision``), from ``weights``
    (a state_dict, or a ``Start`` made at each load)."""
    import torch

    weights = for_run(weights)

    def np64(t: torch.Tensor) -> np.ndarray:
        # a copy: a float64 CPU tensor would otherwise share memory with the live buffer
        return t.detach().to("cpu", torch.float64, copy=True).numpy()

    def tensors(live: Mapping[str, torch.Tensor]) -> LiveTensors:
        def rows(k: str, start: int, stop: int) -> np.ndarray | None:
            t = live[k]
            return np64(t[start:stop]) if t.dim() >= 1 else None
        return LiveTensors(live, lambda k: np64(live[k]), rows)

    def fresh() -> torch.nn.Module:
        m = pair.torch_module(dtype)
        m.load_state_dict(training.with_versions(weights_of(weights), m))  # after the cast: loading first would round
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
    yield "layers", OrderedDict((k, pair.layer_layout(k, acts.pop(k))) for k in list(acts))

    for i, (opt_name, opt) in enumerate(cfg.optimizers().items()):
        # the first optimizer trains the eval model itself (eval mode changed nothing in it): one load less
        model = (model if i == 0 else fresh()).train()
        params = dict(model.named_parameters())
        optimizer = training.torch_optimizer(opt, params.values(), fused=FUSED_OPTIMIZERS)
        losses = []
        probe = training.probe_loss_torch if pair.loss == "probe" else None
        for step, batch in enumerate(batches if cfg.trajectories else batches[:1]):
            first = step == 0 and opt_name == "sgd"
            # the input gradient where every input is float (token ids have none), as on the Flax side
            xs = args(batch, grad=first and all(np.issubdtype(a.dtype, np.floating) for a in batch[0]))
            if first:  # the train step in its two halves, everything read between them (no copy kept)
                optimizer.zero_grad(set_to_none=True)
                loss, out = training.torch_backward(model, xs, target(batch), dtype, probe)
                sd = model.state_dict()
                yield "train", flax_layout(out)
                yield "stats", {k: np64(sd[k]) for k in sd if k in pair.stat_keys}
                yield "counters", {k: int(v) for k, v in sd.items() if "num_batches" in k} if pair.counters else {}
                yield "input_grad", {n: pair.flax_layout(np64(x.grad))
                                     for n, x in zip(pair.input_names, xs, strict=True) if x.grad is not None}
                yield from _once("grads", tensors({k: p.grad for k, p in params.items()}))
                del sd  # it holds the model's tensors: named, it would keep this model alive into the next one's run
                optimizer.step()
            else:
                loss, out = training.torch_train_step(model, optimizer, xs, target(batch), dtype, probe)
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)  # not needed past the step: one copy of the model less
            del loss, out  # the loss's graph holds the parameters: it would keep this model alive into the next
            if step == 0:
                yield from _once(f"{opt_name}_step1", tensors(params))
        if cfg.trajectories:
            del optimizer  # its state is no part of the final state
            yield f"{opt_name}_losses", {"loss": np.array(losses)}
            yield from _once(f"{opt_name}_final", tensors({k: v for k, v in model.state_dict().items()
                                                           if k in pair.param_keys | pair.stat_keys}))
        del model, params


# --------------------------------------------------------------------------- Flax


def flax_runner(pair: Pair, cfg: Config, dtype: str, device: str) -> Callable[[Start | Mapping[str, torch.Tensor],
                                                                                 list[Batch]], Stream]:
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

    evaluate = training.flax_eval_step(model, capture=True, mode=pair.flax_mode)
    evaluate = jax.jit(evaluate) if cfg.jits else evaluate
    txs = {k: training.optax_optimizer(opt) for k, opt in cfg.optimizers().items()}
    loss = training.probe_loss_flax if pair.loss == "probe" else None

    def step_fn(opt_name: str, input_grad: bool, grads: bool):
        step = training.flax_train_step(model, txs[opt_name], input_grad=input_grad, loss=loss, grads=grads,
                                        mode=pair.flax_mode)
        # the state donated: the step's new state takes the old one's buffers, not a second copy
        return jax.jit(step, donate_argnums=0) if cfg.jits else step

    def variables_of(weights: Start | Mapping[str, torch.Tensor]) -> dict:
        # one tensor at a time, each in jax before the next is converted: not the whole tree twice
        flat = {}
        for k, v in weights_of(weights).items():
            if k in pair.weights.by_torch:
                # moved and cast in one pass (torch's copy for the large ones: rules._written)
                (fkey, a), = rules.flatten(pair.weights.to_flax({k: v.detach().cpu().numpy() if hasattr(v, "detach")
                                                                 else np.asarray(v)}, keys=[k], dtype=fdtype)).items()
                flat[fkey] = jax.device_put(jnp.asarray(a), dev)
                del a
        return rules.unflatten(flat)

    def tensors(tree: Mapping[str, Any], keys: set[str]) -> LiveTensors:
        # torch's layout, one tensor at a time, as pair.to_torch would give it
        flat = rules.flatten(tree)
        entries = {e.torch_key: e for e in pair.weights.entries if e.flax_key in flat and e.torch_key in keys}

        host: dict[str, np.ndarray] = {}  # the tensor being read: one device-to-host copy (none on CPU)

        def on_host(k: str) -> np.ndarray:
            if k not in host:
                host.clear()
                host[k] = np.asarray(jax.device_get(flat[entries[k].flax_key]))
            return host[k]

        def fetch(k: str) -> np.ndarray:
            return entries[k].layout.torch_copy(on_host(k), np.float64)

        def rows(k: str, start: int, stop: int) -> np.ndarray | None:
            e = entries[k]
            a = on_host(k)
            if a.shape != pair.weights.flax_shapes.get(e.flax_key):
                return None  # a wrong shape: read whole, where the comparison says so
            return e.layout.torch_rows(a, start, stop, np.float64)
        return LiveTensors(entries, fetch, rows)

    steps: dict = {}

    def run(weights: Start | Mapping[str, torch.Tensor], batches: list[Batch]) -> Stream:
        weights = for_run(weights)
        variables = variables_of(weights)
        logits, inter = evaluate(variables["params"], variables.get("batch_stats", {}), args(batches[0]))
        yield "eval", outputs(logits)
        yield "layers", OrderedDict((normalize(".".join(path)), np64(val))
                                    for path, val in _flat_intermediates(inter))
        del inter
        grad_inputs = all(np.issubdtype(a.dtype, np.floating) for a in batches[0][0])
        for opt_name, tx in txs.items():
            # each optimizer from its own copy: the first step donates the state's buffers
            state = training.flax_state(variables if variables is not None else variables_of(weights), tx)
            variables = None
            losses = []
            for step, batch in enumerate(batches if cfg.trajectories else batches[:1]):
                first = step == 0 and opt_name == "sgd"
                key = (opt_name, first and grad_inputs, first)
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
                    yield from _once("grads", tensors({"params": out.grads}, pair.param_keys))
                del out
                if step == 0:
                    yield from _once(f"{opt_name}_step1", tensors({"params": state.params}, pair.param_keys))
            if cfg.trajectories:
                yield f"{opt_name}_losses", {"loss": np.array(losses)}
                final = {"params": state.params, "batch_stats": state.batch_stats}
                yield from _once(f"{opt_name}_final", tensors(final, pair.param_keys | pair.stat_keys))
                del final
            del state

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
