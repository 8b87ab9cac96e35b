"""The port of a torchnets model against its hand-written twin under jax.jit, side by side in one
process with the bench's XLA flags: the same train step (SGD, parity.bench.worker.jax_programs) and
eval step, the same weights and batch, timed alternately; prints medians and the port/twin ratio.

    python scripts/port_speed.py resnet18 --batch 16 --size 64 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="resnet18")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mode", choices=("train", "infer"), default="train")
    args = ap.parse_args(argv)

    from parity.bench import jobs

    flags = jobs.tuned_cpu_flags(args.mode)  # before jax starts: XLA reads them once
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    import jax
    import numpy as np
    import torch

    import jaxnets
    import torchnets
    from parity import port, training
    from parity.bench import worker
    from parity.convert import rules

    torch.manual_seed(0)
    tm = torchnets.build(args.model)
    x_t = torch.randn(args.batch, 3, args.size, args.size)
    text, _, root, _ = port.write(tm, (x_t,))
    ported = getattr(port._load(text, "ported_model"), root)()
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    x = jax.numpy.asarray(x_t.numpy().transpose(0, 2, 3, 1))
    y = jax.numpy.asarray(np.random.default_rng(0).integers(0, 1000, args.batch))
    shapes = jax.eval_shape(lambda: ported.init(jax.random.key(0), x))
    wmap = rules.WeightMap.match({k: v.shape for k, v in sd.items()}, rules.module_types(tm),
                                 {k: tuple(v.shape) for k, v in rules.flatten(shapes).items()})
    sides = {"port": (ported, wmap.to_flax(sd)),
             "twin": (jaxnets.build(args.model), training.flax_variables(args.model, tm.state_dict(), "fp32",
                                                                          jax.devices("cpu")[0]))}
    calls = {}
    for name, (model, variables) in sides.items():
        tx, train, infer = worker.jax_programs(model, 0.01)
        if args.mode == "train":
            step, state = jax.jit(train), [training.flax_state(variables, tx)]

            def call(step=step, state=state):
                state[0], loss = step(state[0], x, y)
                return loss
        else:
            step = jax.jit(infer)

            def call(step=step, variables=variables):
                return step(variables["params"], variables.get("batch_stats", {}), x)
        t = time.perf_counter()
        jax.block_until_ready(call())
        print(f"{name}: first call (compile) {time.perf_counter() - t:.1f} s")
        calls[name] = call
    times = {n: [] for n in calls}
    for _ in range(3):
        for call in calls.values():
            jax.block_until_ready(call())
    for _ in range(args.steps):
        for name, call in calls.items():  # alternating: the machine's noise falls on both
            t = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - t)
    med = {n: float(np.median(t)) for n, t in times.items()}
    print(f"{args.model} {args.mode} batch {args.batch} {args.size}x{args.size}, XLA_FLAGS={os.environ['XLA_FLAGS']}")
    for n, m in med.items():
        print(f"  {n}: median {m * 1e3:.1f} ms over {args.steps} steps")
    print(f"  port / twin time: {med['port'] / med['twin']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
