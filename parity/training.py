"""Training both twins: one set of weights, one optimizer mapping, one train and eval step per framework.

``check``, ``bench`` and ``experiment`` train through this module; no other module defines a train
step. Every step computes the same loss (softmax cross-entropy, at least in float32) on the same
batch; the Flax step is a pure function of an explicit state, the torch step updates its module
and optimizer in place.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

import netspecs
from parity import layout

if TYPE_CHECKING:
    from collections.abc import Iterable

    import flax.linen as fnn
    import jax
    import optax
    import torch

    Tree = Any  # a pytree of jax or numpy arrays (parameters, statistics, optimizer state)
    TorchArgs = torch.Tensor | tuple[torch.Tensor, ...]
    FlaxArgs = jax.Array | tuple[jax.Array, ...]

# Working dtypes: bf16 keeps float32 weights and computes in bfloat16 (torch autocast, Flax dtype=).
DTYPES = ("fp64", "fp32", "bf16")


def overrides(name: str, **extra: object) -> dict:
    """Model overrides for running both twins on the same work: VGG's dropout off, because the
    frameworks' RNGs cannot draw the same masks."""
    off = {"dropout": 0.0} if isinstance(netspecs.get(name), netspecs.VGGSpec) else {}  # unknown names raise here
    return {**extra, **off}


def _dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def torch_device(device: str, rank: int | None = None) -> torch.device:
    """torch's device for ``device`` ("cpu" or "gpu"); on GPU, rank ``rank``'s own (one GPU per rank)."""
    import torch

    if device == "gpu":
        return torch.device("cuda" if rank is None else f"cuda:{rank}")
    return torch.device("cpu")


# --------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class SGD:
    """torch.optim.SGD's update: buf = momentum * buf + (g + weight_decay * p); p -= lr * buf."""

    lr: float
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass(frozen=True)
class AdamW:
    """torch.optim.AdamW: decoupled weight decay p -= lr * weight_decay * p, bias-corrected moments."""

    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-2


Optimizer = SGD | AdamW


def _sgd_chain(learning_rate, momentum, nesterov, weight_decay):
    import optax

    # torch adds the weight decay to the gradient before the momentum buffer, as this chain does
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


def optax_optimizer(opt: Optimizer) -> optax.GradientTransformation:
    """The optax transformation that updates as torch's optimizer does. The learning rate is state
    (``optax.inject_hyperparams``, in the parameters' dtype) so that schedules set it (``set_lr``)."""
    import optax

    if isinstance(opt, SGD):
        return optax.inject_hyperparams(_sgd_chain, static_args=("momentum", "nesterov", "weight_decay"))(
            learning_rate=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay)
    if isinstance(opt, AdamW):
        return optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "weight_decay"))(
            learning_rate=opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    raise TypeError(f"optimizer must be training.SGD or training.AdamW, got {type(opt).__name__}")


def torch_optimizer(opt: Optimizer, params: Iterable[torch.nn.Parameter],
                    fused: bool = False) -> torch.optim.Optimizer:
    """torch's own optimizer for ``opt``; ``fused``: its fused implementation (one kernel pass per
    tensor instead of one per operation, on CPU and CUDA), the same update rounded as one expression.
    Default: torch's default implementation (single-tensor on CPU, foreach on CUDA)."""
    import torch

    kind = {"fused": True} if fused else {}
    if isinstance(opt, SGD):
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay, **kind)
    if isinstance(opt, AdamW):
        return torch.optim.AdamW(params, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps,
                                 weight_decay=opt.weight_decay, **kind)
    raise TypeError(f"optimizer must be training.SGD or training.AdamW, got {type(opt).__name__}")


# --------------------------------------------------------------------------- torch


def with_versions(weights: Mapping[str, torch.Tensor], module: torch.nn.Module) -> Mapping[str, torch.Tensor]:
    """``weights`` with ``module``'s own state_dict versions (``_metadata``), which a plain dict lacks:
    some modules' load hooks read them (torchvision's MNASNet refuses to load without)."""
    out = OrderedDict(weights)
    out._metadata = getattr(module.state_dict(), "_metadata", None)
    return out


def torch_model(name: str, weights: Mapping[str, torch.Tensor], dtype: str = "fp32", device: str = "cpu",
                channels_last: bool = False, **model_overrides: object) -> torch.nn.Module:
    """torchnets' ``name`` holding ``weights`` in the working dtype's parameter dtype, on ``device``."""
    import torch

    import torchnets

    pdtype = torch.float64 if _dtype(dtype) == "fp64" else torch.float32
    m = torchnets.build(name, **model_overrides).to(dtype=pdtype)
    m.load_state_dict(weights)  # after the cast: loading first would round float64 weights
    dev = torch_device(device)
    return m.to(dev, memory_format=torch.channels_last) if channels_last else m.to(dev)


def torch_inputs(x: np.ndarray, dtype: str, device: str = "cpu", channels_last: bool = False) -> torch.Tensor:
    """An NCHW numpy batch as a torch tensor in the parameter dtype of ``dtype``."""
    import torch

    t = torch.from_numpy(np.asarray(x)).to(torch_device(device),
                                           torch.float64 if _dtype(dtype) == "fp64" else torch.float32)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t


def _autocast(model: torch.nn.Module, dtype: str) -> contextlib.AbstractContextManager:
    import torch

    if dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def _torch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    # at least float32, as under autocast and in the Flax loss
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)


def probe_loss_torch(out: TorchArgs, target: TorchArgs) -> torch.Tensor:
    """sum(output * target) over every output: with a fixed random target, a loss whose gradient
    reaches every output element (for models without labels)."""
    import torch

    outs = out if isinstance(out, (tuple, list)) else [out]
    targets = target if isinstance(target, (tuple, list)) else [target] * len(outs)
    return sum((o.to(torch.promote_types(o.dtype, torch.float32)) * t).sum() for o, t in zip(outs, targets,
                                                                                               strict=True))


def torch_backward(model: torch.nn.Module, x: TorchArgs, labels: TorchArgs, dtype: str = "fp32",
                   loss: Callable[[Any, Any], torch.Tensor] | None = None) -> tuple[torch.Tensor, TorchArgs]:
    """The first half of ``torch_train_step``: forward and backward, (loss, outputs), each parameter's
    ``.grad`` the gradient of this batch alone (clear them first). Read ``p.grad`` between the halves:
    torch's SGD may change it in place in the update (Nesterov without weight decay)."""
    with _autocast(model, dtype):
        out = model(*x) if isinstance(x, tuple) else model(x)
    value = (loss or _torch_loss)(out, labels)
    value.backward()
    return value, out


def torch_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: TorchArgs, labels: TorchArgs,
                     dtype: str = "fp32",
                     loss: Callable[[Any, Any], torch.Tensor] | None = None) -> tuple[torch.Tensor, TorchArgs]:
    """One optimizer step on (x, labels): (loss, outputs) of the forward pass before the update.
    ``x`` may be a tuple of the model's arguments; ``loss(outputs, labels)`` defaults to cross-entropy.
    The step is ``opt.zero_grad``, ``torch_backward`` and ``opt.step()``; a caller that must read the
    gradients calls those three itself."""
    opt.zero_grad(set_to_none=True)
    value, out = torch_backward(model, x, labels, dtype, loss)
    opt.step()
    return value, out


def torch_eval_step(model: torch.nn.Module, x: TorchArgs, dtype: str = "fp32") -> TorchArgs:
    """Inference-mode logits (running statistics, no gradient)."""
    import torch

    with torch.no_grad(), _autocast(model, dtype):
        return model(*x) if isinstance(x, tuple) else model(x)


def mse_loss_torch(out: TorchArgs, target: TorchArgs) -> torch.Tensor:
    """Mean squared error against ``target`` (one tensor per output), summed over the outputs, at least
    in float32: the bench's loss for outputs that are not (batch, classes) logits."""
    import torch

    outs = out if isinstance(out, (tuple, list)) else [out]
    targets = target if isinstance(target, (tuple, list)) else [target]
    return sum(((o.to(torch.promote_types(o.dtype, torch.float32)) - t) ** 2).mean()
               for o, t in zip(outs, targets, strict=True))


def set_torch_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# --------------------------------------------------------------------------- Flax


class FlaxState(NamedTuple):
    """What a Flax train step carries from step to step."""

    params: Tree
    batch_stats: Tree
    opt_state: optax.OptState


class FlaxStep(NamedTuple):
    """What one Flax train step computed besides the new state (before the update)."""

    loss: jax.Array
    logits: Any  # the model's outputs: an array or a tuple of them
    grads: Tree | None  # None when not asked for
    input_grad: tuple[jax.Array, ...] | None  # None unless asked for


def flax_model(name: str, dtype: str = "fp32", conv_impl: str = "auto", **model_overrides: object) -> fnn.Module:
    """jaxnets' ``name`` with the working dtype's parameter and compute dtypes."""
    import jax.numpy as jnp

    import jaxnets

    _dtype(dtype)
    return jaxnets.build(name, dtype=jnp.bfloat16 if dtype == "bf16" else None,
                         param_dtype=jnp.float64 if dtype == "fp64" else jnp.float32, conv_impl=conv_impl,
                         **model_overrides)


def flax_variables(name: str, weights: Mapping[str, torch.Tensor], dtype: str = "fp32",
                   device: jax.Device | None = None, **model_overrides: object) -> dict:
    """torch ``weights`` as the Flax twin's variables (through the converter), floats in the
    parameter dtype of ``dtype``, on ``device`` (a jax device; default: the default one)."""
    import jax
    import jax.numpy as jnp

    from parity.convert import twins

    pdtype = jnp.float64 if _dtype(dtype) == "fp64" else jnp.float32
    variables = twins.torch_to_flax(weights, name, **model_overrides)
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, pdtype) if jnp.issubdtype(a.dtype, jnp.floating) else jnp.asarray(a), variables)
    return jax.device_put(variables, device) if device is not None else variables


def flax_inputs(x: np.ndarray, dtype: str = "fp32", device: jax.Device | None = None) -> jax.Array:
    """An NCHW numpy batch as Flax's NHWC array in the parameter dtype of ``dtype``."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(layout.channels_last(np.asarray(x)), jnp.float64 if _dtype(dtype) == "fp64" else jnp.float32)
    return jax.device_put(a, device) if device is not None else a


def flax_state(variables: Mapping[str, Tree], tx: optax.GradientTransformation) -> FlaxState:
    params = variables["params"]
    return FlaxState(params, variables.get("batch_stats", {}), tx.init(params))


def _flax_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    import jax.numpy as jnp
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), labels).mean()


def probe_loss_flax(out: FlaxArgs, target: FlaxArgs) -> jax.Array:
    """``probe_loss_torch`` for Flax outputs."""
    import jax.numpy as jnp

    outs = out if isinstance(out, (tuple, list)) else [out]
    targets = target if isinstance(target, (tuple, list)) else [target] * len(outs)
    return sum((o.astype(jnp.promote_types(o.dtype, jnp.float32)) * t).sum() for o, t in zip(outs, targets,
                                                                                                strict=True))


def mse_loss_flax(out: FlaxArgs, target: FlaxArgs) -> jax.Array:
    """``mse_loss_torch`` for Flax outputs."""
    import jax.numpy as jnp

    outs = out if isinstance(out, (tuple, list)) else [out]
    targets = target if isinstance(target, (tuple, list)) else [target]
    return sum(((o.astype(jnp.promote_types(o.dtype, jnp.float32)) - t) ** 2).mean()
               for o, t in zip(outs, targets, strict=True))


def compiler_options(device: str | None = None) -> dict[str, str]:
    """The bench's XLA:CPU kernel choice as options of one compile (``parity.xla_cpu.TUNED_OPTIONS``):
    on CPU (``device``, default jax's default backend), unless XLA_FLAGS already sets it (the user's
    flags win) or this jaxlib rejects it."""
    import os

    import jax

    from parity import xla_cpu

    if (device or jax.default_backend()) != "cpu" or any(k in os.environ.get("XLA_FLAGS", "")
                                                         for k in xla_cpu.TUNED_OPTIONS):
        return {}
    return dict(xla_cpu.TUNED_OPTIONS) if _options_accepted() else {}


@functools.cache
def _options_accepted() -> bool:
    import jax
    import jax.numpy as jnp

    from parity import xla_cpu

    try:  # XLA refuses an option it does not know when compiling: a one-element program finds out
        jax.jit(lambda x: x + 1).lower(jnp.zeros(1)).compile(compiler_options=dict(xla_cpu.TUNED_OPTIONS))
    except Exception:
        return False
    return True


def jit(fn: Callable, device: str | None = None, **jit_kwargs: Any) -> Callable:
    """``jax.jit(fn, **jit_kwargs)`` compiled with ``compiler_options(device)``: a train or eval step of
    this module gets the bench's convolution kernels on CPU without XLA_FLAGS (docs/benchmark.md, "Your
    own models")."""
    import jax

    return jax.jit(fn, compiler_options=compiler_options(device) or None, **jit_kwargs)


def _train_flag(train: bool) -> dict:
    return {"train": train}


def flax_train_step(model: fnn.Module, tx: optax.GradientTransformation, input_grad: bool = False,
                    loss: Callable[[Any, Any], jax.Array] | None = None,
                    grads: bool = True,
                    mode: Callable[[bool], dict] = _train_flag,
                    across: Callable[[jax.Array, Tree, Tree], tuple[jax.Array, Tree, Tree]] | None = None
                    ) -> Callable[[FlaxState, FlaxArgs, Any], tuple[FlaxState, FlaxStep]]:
    """``step(state, x, labels) -> (new state, FlaxStep)``, pure: jit it as the caller needs. ``x`` may
    be a tuple of the model's arguments; ``loss(outputs, labels)`` defaults to cross-entropy;
    ``mode(train)`` gives the keyword arguments that put the module in train or eval mode. The input
    gradient costs a backward-data pass of the first layer, so it is computed only when asked;
    ``grads=False`` leaves the parameters' gradients out of ``FlaxStep`` (one copy of the model less).
    ``across(loss, grads, batch_stats)`` combines data-parallel replicas before the update
    (parity.dataparallel)."""
    import jax
    import optax

    def loss_fn(params, stats, x, labels):
        args = x if isinstance(x, tuple) else (x,)
        out, upd = model.apply({"params": params, "batch_stats": stats}, *args, **mode(True), mutable=["batch_stats"])
        return (loss or _flax_loss)(out, labels), (out, upd.get("batch_stats", {}))

    def step(state: FlaxState, x, labels) -> tuple[FlaxState, FlaxStep]:
        argnums = (0, 2) if input_grad else 0
        (value, (out, stats)), g = jax.value_and_grad(loss_fn, argnums, has_aux=True)(
            state.params, state.batch_stats, x, labels)
        g, gx = g if input_grad else (g, None)
        if across is not None:
            value, g, stats = across(value, g, stats)
        updates, opt_state = tx.update(g, state.opt_state, state.params)
        return (FlaxState(optax.apply_updates(state.params, updates), stats, opt_state),
                FlaxStep(value, out, g if grads else None, gx))

    return step


def flax_eval_step(model: fnn.Module, capture: bool = False,
                   mode: Callable[[bool], dict] = _train_flag) -> Callable[..., Any]:
    """``eval(params, batch_stats, x) -> outputs`` with running statistics (``x`` may be a tuple of
    arguments); with ``capture``, ``(outputs, intermediates)``: every submodule's output."""

    def evaluate(params, stats, x):
        v = {"params": params, "batch_stats": stats}
        args = x if isinstance(x, tuple) else (x,)
        if not capture:
            return model.apply(v, *args, **mode(False))
        y, inter = model.apply(v, *args, **mode(False), capture_intermediates=True, mutable=["intermediates"])
        return y, inter["intermediates"]

    return evaluate


def set_flax_lr(state: FlaxState, lr: float) -> FlaxState:
    """``state`` with the optimizer's learning rate set to ``lr`` (in the parameters' dtype)."""
    import jax.numpy as jnp

    hp = state.opt_state.hyperparams
    new = dict(hp, learning_rate=jnp.asarray(lr, hp["learning_rate"].dtype))
    return state._replace(opt_state=state.opt_state._replace(hyperparams=new))
