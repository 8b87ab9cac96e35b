"""How far correct float32 implementations of the same training run drift apart in one epoch.

The degradation experiment's first epoch (same weights, data order and recipe as
`python -m parity experiment degradation`), trained by:
- torch float64 (the reference) and Flax float64;
- torch float32 as shipped (oneDNN convolutions, all threads);
- torch float32 with oneDNN switched off (torch's own native convolution: other rounding);
- torch float32 on one thread (other reduction order);
- Flax float32 (XLA).
Prints each one's first-epoch mean training loss and its gap to torch float32 and to torch float64.
If torch disagrees with itself by as much as it disagrees with Flax, the gap is float32 rounding
amplified by the training dynamics, not a porting difference.

    python scripts/float32_spread.py [--nets plain56,resnet56]
"""

from __future__ import annotations

import argparse

import torch

import torchnets
from parity import tables
from parity.experiments import data as datasets
from parity.experiments import degradation as experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(experiment.DEGRADATION_NETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = datasets.load_digits(args.seed)
    run = dict(data=data, epochs=20, batch=128, lr=0.1, seed=args.seed, warmup=1, run_epochs=1)
    rows = [["net", "run", "epoch-1 loss", "gap to torch fp32", "gap to torch fp64"]]
    threads = torch.get_num_threads()
    for name in args.nets.split(","):
        torch.manual_seed(args.seed)
        w = torchnets.build(name).state_dict()
        losses = {"torch fp64": experiment.train_torch(name, w, **run, dtype="fp64"),
                  "flax fp64": experiment.train_flax(name, w, **run, dtype="fp64"),
                  "torch fp32": experiment.train_torch(name, w, **run)}
        with torch.backends.mkldnn.flags(enabled=False):
            losses["torch fp32, oneDNN off"] = experiment.train_torch(name, w, **run)
        torch.set_num_threads(1)
        try:
            losses["torch fp32, 1 thread"] = experiment.train_torch(name, w, **run)
        finally:
            torch.set_num_threads(threads)
        losses["flax fp32"] = experiment.train_flax(name, w, **run)
        loss = {k: v["train_loss"][0] for k, v in losses.items()}
        for k, v in loss.items():
            rows.append([name, k, f"{v:.6f}", f"{abs(v - loss['torch fp32']) / loss['torch fp32']:.3%}",
                         f"{abs(v - loss['torch fp64']) / loss['torch fp64']:.3%}"])
        print(tables.text_table(rows[:1] + rows[-len(loss):]), "\n", flush=True)


if __name__ == "__main__":
    main()
