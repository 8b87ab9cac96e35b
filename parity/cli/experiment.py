"""``parity experiment``: the papers' experiments, degradation (ResNet Fig. 6) and receptive-field
(VGG's 3x3 argument): arguments, tables, plots, JSON and exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from parity.cli import plots


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="the papers' experiments: degradation, receptive-field")
    esub = p.add_subparsers(dest="experiment", required=True)
    d = esub.add_parser("degradation", help="plain vs residual nets, both frameworks (ResNet Fig. 6)")
    d.add_argument("--data", choices=("digits", "cifar10"), default="digits")
    d.add_argument("--data-dir", type=Path, help="folder with CIFAR-10's binary .bin files")
    d.add_argument("--nets", help="comma separated (default plain20,plain56,resnet20,resnet56)")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--warmup-epochs", type=int, default=1, help="epochs at lr/10 first (default 1)")
    d.add_argument("--batch", type=int, default=128)
    d.add_argument("--lr", type=float, default=0.1)
    d.add_argument("--upscale", type=int, default=1, help="digits only: pixel-repeat factor (1: native 8x8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--fast", action="store_true", help="8 epochs instead of 20 (about 6 min on 2 cores)")
    d.add_argument("--no-yardstick", dest="yardstick", action="store_false",
                   help="skip torch's band: the extra torch runs (channels_last, one thread, a 1-ulp start) "
                   "that change only the rounding")
    d.add_argument("--no-float64", dest="float64", action="store_false",
                   help="skip the first epoch in float64 (both twins) that checks the 1%% bound")
    d.add_argument("--out", type=Path, default=Path("reports/degradation"))
    d.set_defaults(run=run_degradation)
    r = esub.add_parser("receptive-field", help="VGG's 3x3-stack argument and the A-E totals")
    r.add_argument("--channels", type=int, default=256)
    r.add_argument("--size", type=int, default=56)
    r.set_defaults(run=run_receptive_field)


def run_degradation(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import netspecs
    from netspecs import counts
    from parity import tables
    from parity.experiments import data as datasets
    from parity.experiments import degradation

    if args.fast and args.epochs == 20:
        args.epochs = 8
    try:
        nets = netspecs.names(args.nets or ",".join(degradation.DEGRADATION_NETS))
        if args.data == "cifar10":
            if not args.data_dir:
                raise datasets.DataError("--data cifar10 needs --data-dir DIR with the binary CIFAR-10 files")
            data, note = datasets.load_cifar10(args.data_dir), "CIFAR-10 (binary version), 32x32, no augmentation"
        else:
            data = datasets.load_digits(args.seed, upscale=args.upscale)
            side = 8 * args.upscale
            note = ("scikit-learn digits, 8x8 gray replicated to 3 channels"
                    + (f", upscaled x{args.upscale} to {side}x{side} by pixel repetition" if args.upscale > 1 else
                       ", native 8x8 (not upscaled)") + f"; {len(data[0][1])} train / {len(data[1][1])} test images")
    except (KeyError, datasets.DataError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    variants = degradation.VARIANTS if args.yardstick else degradation.VARIANTS[:1]
    bar = tqdm(total=len(nets) * degradation.epochs_per_net(args.epochs, args.yardstick, args.float64),
               desc="degradation", unit="epoch", file=sys.stderr)

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update()

    results = degradation.run(nets, data, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                              warmup=args.warmup_epochs, yardstick=args.yardstick, float64=args.float64,
                              progress=progress)
    bar.close()
    elapsed = time.time() - start
    rows = [["net", "params", "final train err: torch band / flax", "final test err: torch band / flax",
             "epoch-1 float64 t/f", "epoch-1 float64 t/t(1 ulp)", "flax outside torch's band (loss, test err)",
             "band verdict"]]
    failed, band_failed = degradation.verdicts(results)

    def pct(gaps, i=0, digits=3):
        return f"{100 * (max(gaps) if i is None else gaps[i]):.{digits}f}%" if gaps else "-"

    def final(name: str, key: str) -> str:
        r = results[name]
        vals = [r["torch"][key][-1], *(v[key][-1] for v in r.get("torch_variants", {}).values())]
        return f"{100 * min(vals):.1f}-{100 * max(vals):.1f}% / {100 * r['flax'][key][-1]:.1f}%"

    for name, r in results.items():
        d64, b = r.get("float64_rel_diff"), r.get("band")
        epochs = len(r["flax"]["train_loss"])
        rows.append([name, f"{counts.count(netspecs.get(name)).params:,}", final(name, "train_error"),
                     final(name, "test_error"), pct(d64), pct(r.get("torch_float64_ulp_rel_diff")),
                     ", ".join(f"{sum(x > 1 for x in b[k]['outside'])}/{epochs}" for k in degradation.BAND_CURVES)
                     if b else "-",
                     ("not judged: chaotic" if r.get("chaotic") else "PASS" if name not in band_failed else "FAIL")
                     if b else "-"])
    print(f"\ndata: {note}\nrecipe: SGD momentum 0.9, weight decay 1e-4, batch {args.batch}, lr {args.lr / 10} for "
          f"{args.warmup_epochs} warm-up epoch(s), then {args.lr}, /10 at epochs {args.epochs // 2} and "
          f"{(3 * args.epochs) // 4}, {args.epochs} epochs, same data order and initial weights in both "
          f"frameworks; {elapsed:.0f} s\n")
    print(tables.text_table(rows))
    if args.yardstick:
        print(f"\ntorch's band: per epoch, the range of torch's own float32 runs that change only the rounding "
              f"({', '.join(variants)}). Flax is outside at an epoch when beyond the band by more than one band width "
              f"(floored at 2% of the loss, 2 points of test error); the band verdict fails when that happens in "
              f"more than {degradation.OUTSIDE_FRACTION:.0%} of the epochs of either curve. A net is not judged when "
              f"chaotic: torch from a one-ulp start moves its own float64 first epoch by more than "
              f"{degradation.CHAOS_GAP:.2%}.")
        print(degradation.degradation_line(results))
    print("seconds per run (Flax's include compiling): " + "; ".join(
        f"{n}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for n, r in results.items()))
    if args.float64:
        verdict = f"FAIL: {', '.join(failed)}" if failed else "PASS"
        print(f"first epoch, float64 twins within {degradation.FIRST_EPOCH_BOUND:.0%}: {verdict}")
    if band_failed:
        print(f"Flax's float32 curves leave torch's band: FAIL: {', '.join(band_failed)}")
    _plot_curves(results, out / "degradation.png", note)
    (out / "degradation.json").write_text(json.dumps({"data": note, "args": {k: str(v) for k, v in vars(args).items()
                                                                            if k != "run"},
                                                      "seconds": elapsed, "results": results}, indent=1))
    print(f"\nwrote {out}/degradation.png, degradation.json")
    return 1 if failed or band_failed else 0


def _plot_curves(results: dict, path: Path, note: str) -> None:
    from parity.experiments.degradation import band

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, key, title in [(axes[0], "train_error", "training error"), (axes[1], "test_error", "test error")]:
        for name, r in results.items():
            epochs = range(1, len(r["torch"][key]) + 1)
            runs = [r["torch"], *r.get("torch_variants", {}).values()]
            lo, hi = band(runs, key)
            ax.fill_between(epochs, [100 * v for v in lo], [100 * v for v in hi], color=colors[name], alpha=0.3,
                            label=f"{name} torch band ({len(runs)} runs)", linewidth=0)
            ax.plot(epochs, [100 * v for v in r["flax"][key]], color=colors[name], ls="--", label=f"{name} flax")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Degradation (ResNet paper Fig. 6): torch's band over rounding variants (shaded), Flax dashed\n"
                 + note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_receptive_field(args: argparse.Namespace) -> int:
    from parity import tables
    from parity.experiments.receptive_field import stack_table, vgg_table

    print(f"Stacks of 3x3 convs vs one large conv, C={args.channels} channels in and out, "
          f"MACs at {args.size}x{args.size} (measured from torchnets layers):\n")
    print(tables.text_table(stack_table(args.channels, args.size)))
    print("\nVGG configurations (paper Table 1/2), counted from the variant table:\n")
    print(tables.text_table(vgg_table(), right=(2, 3, 4, 5)))
    return 0
