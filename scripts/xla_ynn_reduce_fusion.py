"""Stand-alone reproducer: XLA:CPU's YNNPACK reduce fusion takes convolutions into YNNPACK.

Needs only jax. The end of an eval-mode ResNet: three times (3x3 conv 512 -> 512, a per-channel
affine map as eval-mode BatchNorm, ReLU) on 7x7 maps, then the mean over H and W and a 512 -> 1000
classifier, batch 8, float32. Two versions that compute the same thing:

  plain:  as written
  fenced: reduce_precision at float32's own widths (an exact identity) before the mean

For each it prints the convolutions that end up inside a YNNPACK fusion in the optimised HLO and
the time (median of 20). XLA:CPU's library-fusion pass starts a YNNPACK fusion at the reduce and
grows it up through every producer YNNPACK supports whose users are all inside, convolutions
included. The fence is an instruction YNNPACK does not take, so the growth stops there.

The script runs with --xla_cpu_experimental_ynn_fusion_type=-individual_convolution added to
XLA_FLAGS (the bench's flag: no convolution starts a YNNPACK fusion of its own), unless
--stock is given.

    python scripts/xla_ynn_reduce_fusion.py [--batch 8] [--size 7] [--stock]
"""

from __future__ import annotations

import argparse
import os
import re
import time

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=7, help="spatial size of the maps (7: ResNet's layer4 at 224x224)")
    ap.add_argument("--stock", action="store_true", help="leave XLA_FLAGS as given")
    args = ap.parse_args()
    if not args.stock and "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip()

    import jax  # after XLA_FLAGS: XLA reads them once, when the backend starts
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    rng = np.random.default_rng(0)
    c = 512
    x = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, c)), jnp.float32)
    ws = [jnp.asarray(rng.standard_normal((3, 3, c, c)) / 48, jnp.float32) for _ in range(3)]
    scale, shift = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32), jnp.asarray(rng.standard_normal(c), jnp.float32)
    fc = jnp.asarray(rng.standard_normal((c, 1000)) / 23, jnp.float32)

    def net(fenced: bool):
        def f(x, ws, scale, shift, fc):
            for w in ws:
                y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
                x = jnp.maximum(y * scale + shift, 0.0)
            if fenced:
                x = lax.reduce_precision(x, exponent_bits=8, mantissa_bits=23)
            return x.mean(axis=(1, 2)) @ fc
        return jax.jit(f)

    outs = {}
    for name in ("plain", "fenced"):
        f = net(name == "fenced")
        hlo = f.lower(x, ws, scale, shift, fc).compile().as_text()
        blocks = {m.group(1): b for b in hlo.split("\n\n") if (m := re.match(r"\s*%([\w.\-]+) ", b))}
        inside = []
        for line in hlo.splitlines():
            if '"__ynn_fusion"' in line and "calls=%" in line:
                body = blocks.get(re.search(r"calls=%([\w.\-]+)", line).group(1), "")
                inside += [re.sub(r", metadata=.*", "", ln.strip())[:140] for ln in body.splitlines()
                           if " convolution(" in ln]
        total = len(re.findall(r" convolution\(", hlo))
        outs[name] = np.asarray(f(x, ws, scale, shift, fc))
        times = []
        for _ in range(20):
            t = time.perf_counter()
            f(x, ws, scale, shift, fc).block_until_ready()
            times.append(time.perf_counter() - t)
        print(f"\n{name}: {1e3 * np.median(times):.2f} ms; "
              f"{len(inside)} of {total} convolutions inside YNNPACK fusions")
        for ln in inside:
            print(f"  {ln}")
    same = np.array_equal(outs["plain"], outs["fenced"])
    gap = float(np.max(np.abs(outs["plain"] - outs["fenced"])))
    print(f"\noutputs identical: {same} (max difference {gap:.1e}; kernels differ, so rounding may too)")


if __name__ == "__main__":
    main()
