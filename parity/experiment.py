"""The papers' experiments in both frameworks: ResNet Figure 6 (degradation) and VGG's 3x3 argument."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from parity import flops, report, specs, training
from parity.weights import perturbed

DEGRADATION_NETS = ("plain20", "plain56", "resnet20", "resnet56")
FIRST = 1  # epochs the float64 twins run: the bound below is on the first epoch
FIRST_EPOCH_BOUND = 0.01  # first-epoch training-loss gap allowed (docs/experiments.md)


# ((x_train NCHW, y_train), (x_test, y_test))
Dataset = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """A dataset that is missing or malformed."""


# --------------------------------------------------------------------------- data


def load_digits(seed: int = 0, test_fraction: float = 0.2, upscale: int = 1) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package), gray
    replicated to 3 channels, standardised; optionally upscaled by pixel repetition."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - the experiments extra brings it
        raise DataError("the digits data needs scikit-learn: pip install '.[experiments]'") from e
    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None].repeat(3, axis=1)
    if upscale > 1:
        x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    y = d.target.astype(np.int64)
    return _split(x, y, seed, test_fraction)


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float) -> Dataset:
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = idx[:n_test], idx[n_test:]
    mean, std = x[train].mean(axis=(0, 2, 3), keepdims=True), x[train].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    x = (x - mean) / std
    return (x[train], y[train]), (x[test], y[test])


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary file: records of 1 label byte + 3072 pixel bytes (CHW, uint8)."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path} (expected the binary version: data_batch_1.bin ... "
                        "data_batch_5.bin and test_batch.bin; nothing is downloaded)")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records")
    rec = raw.reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {labels.max()} out of range 0-9; not a CIFAR-10 binary file")
    return rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def load_cifar10(data_dir: Path) -> Dataset:
    data_dir = Path(data_dir)
    train = [read_cifar_bin(data_dir / f"data_batch_{i}.bin") for i in range(1, 6)]
    xt, yt = read_cifar_bin(data_dir / "test_batch.bin")
    x, y = np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train])
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    return ((x - mean) / std, y), ((xt - mean) / std, yt)


# --------------------------------------------------------------------------- training, both frameworks


def recipe(lr: float) -> training.Optimizer:
    """The paper's optimizer: SGD, momentum 0.9, weight decay 1e-4 (learning rate set per epoch)."""
    return training.SGD(lr, momentum=0.9, weight_decay=1e-4)


def lr_at(epoch: int, epochs: int, lr: float, warmup: int = 0) -> float:
    """The paper's step decay scaled to the run: /10 at 50% and at 75% of the epochs (paper: 32k
    and 48k of 64k iterations), after ``warmup`` epochs at lr/10 (the paper's ResNet-110 warm-up).

    Why warm up by default: at lr 0.1 from the first step, float32 training is chaotic here -
    torch against itself with weights moved by one ulp differs by 4.8% in resnet56's first-epoch
    loss (0.37% with the warm-up), so no two frameworks could be compared on it.
    """
    if epoch < warmup:
        return lr / 10
    return lr * (0.1 ** ((epoch >= epochs // 2) + (epoch >= (3 * epochs) // 4)))


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]  # full batches only


def _error(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=1) != y))


def train_torch(name: str, weights: Mapping[str, Any], data: Dataset, epochs: int, batch: int, lr: float,
                seed: int, bar: Any = None, warmup: int = 0, dtype: str = "fp32",
                run_epochs: int | None = None) -> dict:
    """torch's training run; ``run_epochs`` stops after that many epochs of the ``epochs``-long schedule."""
    import torch

    (x, y), (xt, yt) = data
    model = training.torch_model(name, weights, dtype)
    opt = training.torch_optimizer(recipe(lr), model.parameters())
    curves = {"train_loss": [], "train_error": [], "test_error": []}
    xt_t = training.torch_inputs(xt, dtype)
    for epoch in range(epochs if run_epochs is None else run_epochs):
        training.set_torch_lr(opt, lr_at(epoch, epochs, lr, warmup))
        model.train()
        losses, errs = [], []
        for idx in _batches(len(x), batch, seed, epoch):
            loss, logits = training.torch_train_step(model, opt, training.torch_inputs(x[idx], dtype),
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


def train_flax(name: str, weights: Mapping[str, Any], data: Dataset, epochs: int, batch: int, lr: float,
               seed: int, bar: Any = None, warmup: int = 0, dtype: str = "fp32",
               run_epochs: int | None = None) -> dict:
    """The Flax twin's run, the same recipe as ``train_torch`` (float64 inside jax.enable_x64)."""
    import jax

    with jax.enable_x64(dtype == "fp64"):
        return _train_flax(name, weights, data, epochs, batch, lr, seed, bar, warmup, dtype,
                           epochs if run_epochs is None else run_epochs)


def _train_flax(name, weights, data, epochs, batch, lr, seed, bar, warmup, dtype, run_epochs) -> dict:
    import jax
    import jax.numpy as jnp

    (x, y), (xt, yt) = data
    model = training.flax_model(name, dtype)
    tx = training.optax_optimizer(recipe(lr))
    state = training.flax_state(training.flax_variables(name, weights, dtype), tx)
    step = jax.jit(training.flax_train_step(model, tx))
    evaluate = jax.jit(training.flax_eval_step(model))
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


def degradation(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    import torchnets

    if args.data == "cifar10":
        if not args.data_dir:
            raise SystemExit("error: --data cifar10 needs --data-dir DIR with the binary CIFAR-10 files")
        data, note = load_cifar10(args.data_dir), "CIFAR-10 (binary version), 32x32, no augmentation"
    else:
        data = load_digits(args.seed, upscale=args.upscale)
        side = 8 * args.upscale
        note = ("scikit-learn digits, 8x8 gray replicated to 3 channels"
                + (f", upscaled x{args.upscale} to {side}x{side} by pixel repetition" if args.upscale > 1 else
                   ", native 8x8 (not upscaled)") + f"; {len(data[0][1])} train / {len(data[1][1])} test images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nets = [n.strip() for n in (args.nets or ",".join(DEGRADATION_NETS)).split(",")]
    results: dict = {}
    start = time.time()
    runs = 3 if args.yardstick else 2
    runs_per_net = runs * args.epochs + (runs * FIRST if args.float64 else 0)
    bar = tqdm(total=len(nets) * runs_per_net, desc="degradation", unit="epoch", file=sys.stderr)
    for name in nets:
        torch.manual_seed(args.seed)
        weights = torchnets.build(name).state_dict()  # the same initial weights for both frameworks
        run = dict(data=data, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, bar=bar,
                   warmup=args.warmup_epochs)
        bar.set_postfix_str(f"{name} torch")
        t = train_torch(name, weights, **run)
        bar.set_postfix_str(f"{name} flax")
        f = train_flax(name, weights, **run)
        results[name] = {"torch": t, "flax": f, "train_loss_rel_diff": _gap(f, t)}
        if args.yardstick:
            # torch against itself from weights one float32 ulp away: how far float32 chaos alone
            # moves the curve, the yardstick for the frameworks' gap
            bar.set_postfix_str(f"{name} torch, 1-ulp start")
            u = train_torch(name, perturbed(weights, 0), **run)
            results[name]["torch_ulp"] = u
            results[name]["torch_ulp_rel_diff"] = _gap(u, t)
        if args.float64:
            # the same first epoch with both twins in float64: the structural check of the curves,
            # which float32 rounding (chaotic in deep plain nets, docs/experiments.md) cannot blur
            bar.set_postfix_str(f"{name} torch, float64")
            t64 = train_torch(name, weights, **run, dtype="fp64", run_epochs=FIRST)
            bar.set_postfix_str(f"{name} flax, float64")
            f64 = train_flax(name, weights, **run, dtype="fp64", run_epochs=FIRST)
            results[name].update(torch_float64=t64, flax_float64=f64, float64_rel_diff=_gap(f64, t64),
                                 float32_to_float64={"torch": _gap(t, t64), "flax": _gap(f, t64)})
            if args.yardstick:  # deep plain nets train chaotically even in float64: torch vs itself
                bar.set_postfix_str(f"{name} torch, float64, 1-ulp start")
                w64 = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
                u64 = train_torch(name, perturbed(w64, 0), **run, dtype="fp64", run_epochs=FIRST)
                results[name].update(torch_float64_ulp=u64, torch_float64_ulp_rel_diff=_gap(u64, t64))
    bar.close()
    elapsed = time.time() - start
    rows = [["net", "params", "final train err t/f", "final test err t/f", "epoch-1 float64 t/f",
             "epoch-1 float64 t/t(1 ulp)", "epoch-1 t/f", "epoch-1 t/t(1 ulp)", "max gap t/f",
             "max gap t/t(1 ulp)"]]
    failed = []

    def pct(gaps, i=0, digits=3):
        return f"{100 * (max(gaps) if i is None else gaps[i]):.{digits}f}%" if gaps else "-"

    for name, r in results.items():
        ulp, d64 = r.get("torch_ulp_rel_diff"), r.get("float64_rel_diff")
        if d64 and d64[0] > FIRST_EPOCH_BOUND:
            failed.append(name)
        rows.append([name, f"{flops.count(specs.get(name)).params:,}",
                     f"{100 * r['torch']['train_error'][-1]:.1f}% / {100 * r['flax']['train_error'][-1]:.1f}%",
                     f"{100 * r['torch']['test_error'][-1]:.1f}% / {100 * r['flax']['test_error'][-1]:.1f}%",
                     pct(d64), pct(r.get("torch_float64_ulp_rel_diff")), pct(r["train_loss_rel_diff"]), pct(ulp),
                     pct(r["train_loss_rel_diff"], None, 2), pct(ulp, None, 2)])
    print(f"\ndata: {note}\nrecipe: SGD momentum 0.9, weight decay 1e-4, batch {args.batch}, lr {args.lr / 10} for "
          f"{args.warmup_epochs} warm-up epoch(s), then {args.lr}, /10 at epochs {args.epochs // 2} and "
          f"{(3 * args.epochs) // 4}, {args.epochs} epochs, same data order and initial weights in both "
          f"frameworks; {elapsed:.0f} s\n")
    print(report.text_table(rows))
    print("\ngaps: relative difference of the per-epoch mean training loss; t/f: torch vs Flax (float32 unless "
          "marked); t/t(1 ulp): torch vs torch from weights one ulp away (chaos alone, the yardstick)")
    if args.float64:
        verdict = f"FAIL: {', '.join(failed)}" if failed else "PASS"
        print(f"first epoch, float64 twins within {FIRST_EPOCH_BOUND:.0%}: {verdict}")
    _plot_curves(results, out / "degradation.png", note)
    (out / "degradation.json").write_text(json.dumps({"data": note, "args": {k: str(v) for k, v in vars(args).items()
                                                                            if k != "run"},
                                                      "seconds": elapsed, "results": results}, indent=1))
    print(f"\nwrote {out}/degradation.png, degradation.json")
    return 1 if failed else 0


def _gap(a: dict, b: dict) -> list[float]:
    """Per-epoch relative gap of ``a``'s mean training loss to ``b``'s (over the epochs both ran)."""
    return [abs(x - y) / abs(y) for x, y in zip(a["train_loss"], b["train_loss"], strict=False)]


def _plot_curves(results: dict, path: Path, note: str) -> None:
    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, key, title in [(axes[0], "train_error", "training error"), (axes[1], "test_error", "test error")]:
        for name, r in results.items():
            epochs = range(1, len(r["torch"][key]) + 1)
            ax.plot(epochs, [100 * v for v in r["torch"][key]], color=colors[name], label=f"{name} torch")
            ax.plot(epochs, [100 * v for v in r["flax"][key]], color=colors[name], ls="--", label=f"{name} flax")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Degradation (ResNet paper Fig. 6), torch solid / Flax dashed\n{note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- VGG's receptive-field argument


def stack_table(channels: int = 256, size: int = 56) -> list[list[str]]:
    """n stacked 3x3 convs vs one (2n+1)x(2n+1) conv, from real torch layers: receptive field
    measured by back-propagating from the centre output, weights counted, MACs at size x size."""
    import torch
    from torch import nn

    from torchnets import layers

    rows = [["layers", "receptive field", "weights", "weights / C^2", "GMACs", "nonlinearities"]]
    for n in (2, 3):
        for stack in (True, False):
            mods = [layers.conv(channels, channels, 3) for _ in range(n)] if stack else \
                [layers.conv(channels, channels, 2 * n + 1)]
            net = nn.Sequential(*[m for conv in mods for m in (conv, nn.ReLU())])
            x = torch.randn(1, channels, 31, 31, requires_grad=True)
            net(x)[0, :, 15, 15].sum().backward()
            touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
            rf = int(touched[:, 0].max() - touched[:, 0].min() + 1)
            weights = sum(m.weight.numel() for m in mods)
            macs = sum(m.weight.numel() for m in mods) * size * size
            label = f"{n} x 3x3" if stack else f"1 x {2 * n + 1}x{2 * n + 1}"
            rows.append([label, f"{rf}x{rf}", f"{weights:,}", f"{weights / channels**2:.0f}", f"{macs / 1e9:.2f}",
                         str(n if stack else 1)])
    return rows


def vgg_table() -> list[list[str]]:
    rows = [["config", "model", "conv layers", "params", "paper (M)", "GMACs @224"]]
    paper = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
    for cfg, name in [("A", "vgg11"), ("A-LRN", "vgg11_lrn"), ("B", "vgg13"), ("C", "vgg16_c"), ("D", "vgg16"),
                      ("E", "vgg19")]:
        spec = specs.get(name)
        c = flops.count(spec)
        convs = sum(1 for la in spec.features() if la.kind == "conv")
        rows.append([cfg, name, str(convs), f"{c.params:,}", str(paper[cfg]), f"{c.macs / 1e9:.2f}"])
    return rows


def receptive_field(args: argparse.Namespace) -> int:
    print(f"Stacks of 3x3 convs vs one large conv, C={args.channels} channels in and out, "
          f"MACs at {args.size}x{args.size} (measured from torchnets layers):\n")
    print(report.text_table(stack_table(args.channels, args.size)))
    print("\nVGG configurations (paper Table 1/2), counted from the variant table:\n")
    print(report.text_table(vgg_table(), right=(2, 3, 4, 5)))
    return 0
