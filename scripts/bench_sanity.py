"""Harness overhead and reproducibility of `python -m parity bench` (issue: not a timed test).

Runs the bench's own measurement twice and a minimal hand-written loop of the same step
(resnet18, batch 32, 64x64, CPU, fp32) for JAX and torch eager, each in a fresh process, and
prints images/s side by side:  python scripts/bench_sanity.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

MINIMAL = r"""
import json, sys, time
import numpy as np
fw, steps = sys.argv[1], int(sys.argv[2])
from parity.bench import jobs, worker
job = jobs.Job("resnet18", fw, "train", 32, 64, steps=steps, warmup=2)
sd, x_np, y_np = worker.inputs(job)
if fw == "jax":
    import jax, jax.numpy as jnp, optax, jaxnets
    from parity import convert
    m = jaxnets.build("resnet18"); v = convert.torch_to_flax(sd, "resnet18")
    x = jnp.asarray(x_np.transpose(0, 2, 3, 1)); y = jnp.asarray(y_np)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
    def step(p, s, o):
        def lf(p):
            out, upd = m.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd["batch_stats"]
        (l, s), g = jax.value_and_grad(lf, has_aux=True)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), s, o, l
    step = jax.jit(step, donate_argnums=(0, 1, 2))
    st = [v["params"], v["batch_stats"], tx.init(v["params"])]
    for _ in range(3):
        st[0], st[1], st[2], l = step(*st)
    l.block_until_ready()
    t = time.perf_counter()
    for _ in range(steps):
        st[0], st[1], st[2], l = step(*st)
    l.block_until_ready()
else:
    import torch, torch.nn.functional as F, torchnets
    m = torchnets.build("resnet18"); m.load_state_dict(sd)
    m = m.to(memory_format=torch.channels_last).train()
    x = torch.from_numpy(x_np).contiguous(memory_format=torch.channels_last); y = torch.from_numpy(y_np)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    def step():
        loss = F.cross_entropy(m(x), y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        l = step()
    l.item()
print("RESULT", json.dumps({"images_per_s": 32 * steps / (time.perf_counter() - t)}))
"""


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][7:])


def main() -> None:
    from parity.bench import jobs

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--frameworks", default="jax,torch-eager")
    args = p.parse_args()
    print(f"resnet18 train, batch 32, 64x64, CPU fp32, {args.steps} timed steps; images/s")
    # The bench reports medians; the minimal loop can only time the whole loop (a mean), and a
    # median ignores the slow outliers a mean includes, so overhead is judged on the bench's mean.
    print(f"{'framework':12s} {'bench run 1':>12s} {'bench run 2':>12s} {'minimal loop':>13s} "
          f"{'run2/run1':>10s} {'bench mean/minimal':>19s} {'bench median/minimal':>21s}")
    for fw in args.frameworks.split(","):
        t0 = time.time()
        runs = [jobs.run_job(jobs.Job("resnet18", fw, "train", 32, 64, steps=args.steps, warmup=2))
                for _ in range(2)]
        ips = [32 / r.median for r in runs]
        mean_ips = 32 / (sum(runs[0].times_s) / len(runs[0].times_s))
        minimal = run([sys.executable, "-c", MINIMAL, fw, str(args.steps)])["images_per_s"]
        print(f"{fw:12s} {ips[0]:12.2f} {ips[1]:12.2f} {minimal:13.2f} {ips[1] / ips[0]:10.3f} "
              f"{mean_ips / minimal:19.3f} {ips[0] / minimal:21.3f}   ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
