"""The bench's JAX speed without the bench: a twin's SGD train step under a plain ``jax.jit`` (jaxlib's
defaults), under ``parity.training.jit`` (the bench's convolution choice as options of one compile), and
torch.compile on the same weights and batch, timed in alternating rounds in one process; then the same
again in a second process started with the bench's XLA_FLAGS (the only way to the train-step flag,
which jaxlib takes from XLA_FLAGS alone). Prints medians and each JAX step's ratio to torch.compile.

    python scripts/compile_options_bench.py --models resnet18,resnet50 --batch 16 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(model_name: str, batch: int, size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per train step of each variant, alternating rounds of ``steps`` steps."""
    import jax
    import numpy as np
    import torch

    from parity import training
    from parity.bench import worker
    from parity.bench.jobs import Job

    job = Job(model_name, "jax", batch=batch, size=size)
    sd, x_np, y_np = worker.inputs(job)
    dev = jax.devices("cpu")[0]
    ov = training.overrides(model_name)
    model = training.flax_model(model_name, **ov)
    x, y = training.flax_inputs(x_np, "fp32", dev), jax.numpy.asarray(y_np)
    calls = {}
    for name, jit in (("jax.jit", jax.jit), ("training.jit", training.jit)):
        tx, train, _ = worker.jax_programs(model, 0.01)
        step = jit(train, donate_argnums=0)
        state = [training.flax_state(training.flax_variables(model_name, sd, "fp32", dev, **ov), tx)]

        def call(step=step, state=state):
            state[0], out = step(state[0], x, y)
            jax.block_until_ready(out)
        calls[name] = call
    tm = training.torch_model(model_name, sd, channels_last=True, **ov).train()
    opt = training.torch_optimizer(worker.optimizer(0.01), tm.parameters())
    xt, yt = training.torch_inputs(x_np, "fp32", channels_last=True), torch.from_numpy(y_np)
    compiled = torch.compile(lambda: training.torch_train_step(tm, opt, xt, yt))
    calls["torch.compile"] = lambda: compiled()[0].item()
    for call in calls.values():  # compile and warm up
        for _ in range(3):
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(steps):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="steps per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if args.child:
        print("RESULT " + json.dumps({m: measure(m, args.batch, args.size, args.steps, args.rounds) for m in models}))
        return 0
    from parity import xla_cpu

    results = {}
    for label, flags in (("jaxlib's defaults", os.environ.get("XLA_FLAGS", "")),
                         ("the bench's XLA_FLAGS", " ".join([os.environ.get("XLA_FLAGS", ""),
                                                             *xla_cpu.tuned_flags("train")]).strip())):
        proc = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child"],
                              env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=3600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"error: the {label} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[label] = json.loads(lines[-1][7:])
    print(f"train step, SGD, batch {args.batch}, {args.size}x{args.size}, median of {args.rounds} alternating "
          f"rounds x {args.steps} steps; ratio = torch.compile's step time / this step's (above 1: faster)")
    print(f"| process XLA_FLAGS | model | {' | '.join(['jax.jit', 'training.jit', 'torch.compile'])} |")
    print("|---|---|---|---|---|")
    for label, per_model in results.items():
        for m, med in per_model.items():
            ref = med["torch.compile"]
            cells = [f"{1e3 * med[k]:.1f} ms ({ref / med[k]:.2f}x)" for k in ("jax.jit", "training.jit")]
            print(f"| {label} | {m} | {' | '.join(cells)} | {1e3 * ref:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
