"""ResNet paper Figure 6 (the degradation problem) in both frameworks: the same data order and
initial weights, the paper's recipe scaled to the run, torch's own band over rounding variants and
a float64 first epoch of both twins (docs/experiments.md)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from parity import training
from parity.check.weights import perturbed
from parity.experiments.data import Dataset

if TYPE_CHECKING:
    import torch

DEGRADATION_NETS = ("plain20", "plain56", "resnet20", "resnet56")
FIRST = 1  # epochs the float64 twins run: the bound below is on the first epoch
FIRST_EPOCH_BOUND = 0.01  # first-epoch training-loss gap allowed (docs/experiments.md)
Curves = dict[str, list[float]]  # "train_loss", "train_error", "test_error" -> one value per epoch
Progress = Callable[[str], None]  # told each finished epoch ("net run")


def recipe(lr: float) -> training.Optimizer:
    """The paper's optimizer: SGD, momentum 0.9, weight decay 1e-4 (learning rate set per epoch)."""
    return training.SGD(lr, momentum=0.9, weight_decay=1e-4)


def lr_at(epoch: int, epochs: int, lr: float, warmup: int = 0) -> float:
    """The paper's step decay scaled to the run: /10 at 50% and at 75% of the epochs (paper: 32k
    and 48k of 64k iterations), after ``warmup`` epochs at lr/10 (the paper's ResNet-110 warm-up).

    The warm-up is on by default: without it float32 training is chaotic from the first step and no
    two frameworks could be compared on it (docs/experiments.md, "Warm-up").
    """
    if epoch < warmup:
        return lr / 10
    return lr * (0.1 ** ((epoch >= epochs // 2) + (epoch >= (3 * epochs) // 4)))


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]  # full batches only


def _error(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) != y))


def train_torch(name: str, weights: Mapping[str, torch.Tensor], data: Dataset, epochs: int, batch: int, lr: float,
                seed: int, bar: _Bar | None = None, warmup: int = 0, dtype: str = "fp32",
                run_epochs: int | None = None, channels_last: bool = False) -> Curves:
    """torch's training run; ``run_epochs`` stops after that many epochs of the ``epochs``-long schedule;
    ``channels_last``: model and batches in that memory format (other kernels, the same math)."""
    import torch

    (x, y), (xt, yt) = data
    model = training.torch_model(name, weights, dtype, channels_last=channels_last)
    opt = training.torch_optimizer(recipe(lr), model.parameters())
    curves = {"train_loss": [], "train_error": [], "test_error": []}
    xt_t = training.torch_inputs(xt, dtype, channels_last=channels_last)
    for epoch in range(epochs if run_epochs is None else run_epochs):
        training.set_torch_lr(opt, lr_at(epoch, epochs, lr, warmup))
        model.train()
        losses, errs = [], []
        for idx in _batches(len(x), batch, seed, epoch):
            loss, logits = training.torch_train_step(model, opt, training.torch_inputs(x[idx], dtype,
                                                                                       channels_last=channels_last),
                                                     torch.from_numpy(y[idx]), dtype)
            losses.append(loss.item())
            errs.append(_error(logits.detach().numpy(), y[idx]))
        model.eval()
        test_logits = training.torch_eval_step(model, xt_t, dtype).numpy()
        curves["train_loss"].append(float(np.mean(losses)))
        curves["train_error"].append(float(np.mean(errs)))
        curves["test_error"].append(_error(test_logits, yt))
        if bar:
            bar.update()
    return curves


def train_flax(name: str, weights: Mapping[str, torch.Tensor], data: Dataset, epochs: int, batch: int, lr: float,
               seed: int, bar: _Bar | None = None, warmup: int = 0, dtype: str = "fp32",
               run_epochs: int | None = None) -> Curves:
    """The Flax twin's run, the same recipe as ``train_torch`` (float64 inside jax.enable_x64)."""
    import jax

    with jax.enable_x64(dtype == "fp64"):
        return _train_flax(name, weights, data, epochs, batch, lr, seed, bar, warmup, dtype,
                           epochs if run_epochs is None else run_epochs)


def _train_flax(name: str, weights: Mapping[str, torch.Tensor], data: Dataset, epochs: int, batch: int, lr: float,
                seed: int, bar: _Bar | None, warmup: int, dtype: str, run_epochs: int) -> Curves:
    import jax.numpy as jnp

    (x, y), (xt, yt) = data
    model = training.flax_model(name, dtype)
    tx = training.optax_optimizer(recipe(lr))
    state = training.flax_state(training.flax_variables(name, weights, dtype), tx)
    # the bench's XLA:CPU kernel choice, per compile (training.jit): the experiment's speed is the bench's
    step = training.jit(training.flax_train_step(model, tx))
    evaluate = training.jit(training.flax_eval_step(model))
    xt_nhwc = training.flax_inputs(xt, dtype)
    curves = {"train_loss": [], "train_error": [], "test_error": []}
    for epoch in range(run_epochs):
        state = training.set_flax_lr(state, lr_at(epoch, epochs, lr, warmup))
        losses, errs = [], []
        for idx in _batches(len(x), batch, seed, epoch):
            state, out = step(state, training.flax_inputs(x[idx], dtype), jnp.asarray(y[idx]))
            losses.append(float(out.loss))
            errs.append(_error(np.asarray(out.logits), y[idx]))
        curves["train_loss"].append(float(np.mean(losses)))
        curves["train_error"].append(float(np.mean(errs)))
        curves["test_error"].append(_error(np.asarray(evaluate(state.params, state.batch_stats, xt_nhwc)), yt))
        if bar:
            bar.update()
    return curves


# The yardstick: torch builds that change only the rounding, each trained over all epochs; their
# per-epoch spread is torch's own band. oneDNN off is available to ``rounding`` but not in the band: it
# is too slow for a default run (docs/experiments.md, "The yardstick").
VARIANTS = ("stock", "channels_last", "1 thread", "1-ulp start")
BAND_CURVES = ("train_loss", "test_error")
# Flax is "outside" at an epoch when it is beyond torch's band by more than one band width, the width
# floored (a band of identical curves has width 0): 2% of the band's middle for the loss, 2 points for
# the test error (359 test images: one image is 0.28 points).
BAND_FLOOR = {"train_loss": ("relative", 0.02), "test_error": ("absolute", 0.02)}
OUTSIDE_FRACTION = 0.25  # ... and fails the band when that happens in more than a quarter of the epochs
# A net is chaotic when torch from a one-ulp start moves its own float64 first-epoch training loss by
# more than this; its float32 curves are then shown against the band, not judged: four samples cannot
# bound where rounding takes a chaotic run (docs/experiments.md, "Chaotic nets").
CHAOS_GAP = 1e-4


@contextlib.contextmanager
def rounding(variant: str) -> Iterator[None]:
    """torch as ``variant`` rounds: oneDNN's kernels off (torch's native convolution), or one thread
    (another reduction order); "stock", "channels_last" (set on the model and batch by
    ``train_torch``) and "1-ulp start" leave torch's switches as they are."""
    import torch

    if variant not in (*VARIANTS, "oneDNN off"):
        raise ValueError(f"variant must be one of {(*VARIANTS, 'oneDNN off')}, got {variant!r}")
    if variant == "oneDNN off":
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    elif variant == "1 thread":
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)
    else:
        yield


def band(runs: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per epoch, the lowest and highest value of ``key`` over torch's runs."""
    values = np.array([r[key] for r in runs], dtype=float)
    return values.min(axis=0).tolist(), values.max(axis=0).tolist()


def outside(flax: list[float], lo: list[float], hi: list[float], key: str) -> list[float]:
    """Per epoch, how far Flax's value lies beyond torch's band, in band widths (0 inside)."""
    kind, floor = BAND_FLOOR[key]
    out = []
    for f, a, b in zip(flax, lo, hi, strict=True):
        width = max(b - a, floor * abs(a + b) / 2 if kind == "relative" else floor)
        out.append(max(0.0, f - b, a - f) / width)
    return out


def band_verdict(flax: dict, runs: list[dict]) -> dict:
    """Per curve: torch's band, Flax's distance outside it per epoch, the fraction of epochs more
    than one band width outside, and whether that fraction is within OUTSIDE_FRACTION."""
    out = {}
    for key in BAND_CURVES:
        lo, hi = band(runs, key)
        dist = outside(flax[key], lo, hi, key)
        frac = sum(d > 1 for d in dist) / len(dist)
        out[key] = {"lo": lo, "hi": hi, "outside": dist, "fraction": frac, "ok": frac <= OUTSIDE_FRACTION}
    return out


def run(nets: list[str], data: Dataset, *, epochs: int, batch: int, lr: float, seed: int, warmup: int,
        yardstick: bool = True, float64: bool = True, progress: Progress | None = None) -> dict[str, dict]:
    """Every net trained in both frameworks from the same weights: torch stock (and, with ``yardstick``,
    the rounding variants that make its band), Flax, and with ``float64`` the first epoch of both twins
    in float64 (and of torch from a one-ulp start, which tells chaotic nets). Per net: the curves, the
    gaps, the band verdict and each run's seconds."""
    import torch

    import torchnets

    variants = VARIANTS if yardstick else VARIANTS[:1]
    results: dict[str, dict] = {}
    for name in nets:
        torch.manual_seed(seed)
        weights = torchnets.build(name).state_dict()  # the same initial weights for both frameworks
        bar = _Bar(progress, name)
        kw = dict(data=data, epochs=epochs, batch=batch, lr=lr, seed=seed, bar=bar, warmup=warmup)
        torch_runs, seconds = {}, {}
        for v in variants:
            with rounding(v):
                torch_runs[v] = _timed(seconds, bar, f"torch, {v}", train_torch, name,
                                       perturbed(weights, 0) if v == "1-ulp start" else weights, **kw,
                                       channels_last=v == "channels_last")
        t = torch_runs["stock"]
        f = _timed(seconds, bar, "flax", train_flax, name, weights, **kw)
        results[name] = {"torch": t, "flax": f, "train_loss_rel_diff": gap(f, t), "seconds": seconds}
        if yardstick:
            results[name]["torch_variants"] = {v: r for v, r in torch_runs.items() if v != "stock"}
            results[name]["band"] = band_verdict(f, list(torch_runs.values()))
            results[name]["torch_ulp"] = torch_runs["1-ulp start"]
            results[name]["torch_ulp_rel_diff"] = gap(torch_runs["1-ulp start"], t)
        if float64:
            # the first epoch with both twins in float64: the structural check of the curves, which
            # float32 rounding (chaotic in deep plain nets) cannot blur
            t64 = _timed(seconds, bar, "torch, float64", train_torch, name, weights, **kw, dtype="fp64",
                         run_epochs=FIRST)
            f64 = _timed(seconds, bar, "flax, float64", train_flax, name, weights, **kw, dtype="fp64",
                         run_epochs=FIRST)
            results[name].update(torch_float64=t64, flax_float64=f64, float64_rel_diff=gap(f64, t64),
                                 float32_to_float64={"torch": gap(t, t64), "flax": gap(f, t64)})
            if yardstick:  # deep plain nets train chaotically even in float64: torch against itself
                w64 = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
                u64 = _timed(seconds, bar, "torch, float64, 1-ulp start", train_torch, name, perturbed(w64, 0),
                             **kw, dtype="fp64", run_epochs=FIRST)
                ulp_gap = gap(u64, t64)
                results[name].update(torch_float64_ulp=u64, torch_float64_ulp_rel_diff=ulp_gap,
                                     chaotic=ulp_gap[0] > CHAOS_GAP)
    return results


def epochs_per_net(epochs: int, yardstick: bool, float64: bool) -> int:
    """How many epochs ``run`` trains per net, over all its runs (for a progress bar)."""
    variants = len(VARIANTS) if yardstick else 1
    return (variants + 1) * epochs + ((3 if yardstick else 2) * FIRST if float64 else 0)


def verdicts(results: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(nets whose float64 first epochs differ by more than FIRST_EPOCH_BOUND, nets whose Flax float32
    curves leave torch's band; chaotic nets are not judged on the band)."""
    failed, band_failed = [], []
    for name, r in results.items():
        d64 = r.get("float64_rel_diff")
        if d64 and d64[0] > FIRST_EPOCH_BOUND:
            failed.append(name)
        b = r.get("band")
        if b and not r.get("chaotic") and not all(c["ok"] for c in b.values()):
            band_failed.append(name)
    return failed, band_failed


class _Bar:
    """A net's runs telling ``progress`` of each epoch (what ``train_torch``/``train_flax`` call)."""

    def __init__(self, progress: Progress | None, name: str):
        self.progress, self.name, self.label = progress, name, ""

    def update(self) -> None:
        if self.progress:
            self.progress(f"{self.name} {self.label}")


def _timed(seconds: dict[str, float], bar: _Bar, label: str, fn: Callable[..., Curves], /, *args: Any,
           **kwargs: Any) -> Curves:
    """``fn(*args, **kwargs)``, its wall time recorded in ``seconds[label]`` (the report's per-run times)."""
    bar.label = label
    start = time.time()
    out = fn(*args, **kwargs)
    seconds[label] = round(time.time() - start, 1)
    return out


def degradation_line(results: dict[str, dict]) -> str:
    """Whether the degradation shows in each framework, on final training error: plain56 above
    plain20 (torch: its whole band above plain20's), resnet56 not above resnet20."""
    need = {"plain20", "plain56", "resnet20", "resnet56"}
    if not need <= set(results):
        return "degradation: needs plain20, plain56, resnet20 and resnet56 in one run"

    def finals(name: str) -> list[float]:
        r = results[name]
        return [r["torch"]["train_error"][-1], *(v["train_error"][-1] for v in r.get("torch_variants", {}).values())]

    torch_ok = min(finals("plain56")) > max(finals("plain20")) and min(finals("resnet56")) <= max(finals("resnet20"))
    flax = {n: results[n]["flax"]["train_error"][-1] for n in need}
    flax_ok = flax["plain56"] > flax["plain20"] and flax["resnet56"] <= flax["resnet20"] + 0.01
    return (f"degradation (final training error: plain56 above plain20, resnet56 not above resnet20): "
            f"torch {'yes' if torch_ok else 'NO'}, Flax {'yes' if flax_ok else 'NO'}")


def gap(a: Curves, b: Curves) -> list[float]:
    """Per-epoch relative gap of ``a``'s mean training loss to ``b``'s (over the epochs both ran)."""
    return [abs(x - y) / abs(y) for x, y in zip(a["train_loss"], b["train_loss"], strict=False)]
