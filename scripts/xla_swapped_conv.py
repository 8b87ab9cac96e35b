"""Stand-alone reproducer: XLA:CPU swaps a small-map convolution's operands and runs it slowly.

Needs only jax. One 3x3 conv, 512 -> 512 channels, padded 1, on a 2x2 input (ResNet's layer4 at
64x64 inputs), batch 16, float32, in two formulations that compute the same sum of products:

  lax:  jax.lax.conv_general_dilated
  taps: the 9 shifted slices of the padded input, stacked, and one dot_general with the kernel

For each it prints the forward and gradient times (median of 10) and the optimised HLO lines of
the convolutions. XLA's algebraic simplifier swaps input and kernel when the kernel window
(3x3 = 9) has more elements than the input's spatial area (2x2 = 4); the swapped convolution
carries `rhs_reversal=1x1`, which XLA:CPU runs in a generic loop instead of its fast kernels.

    python scripts/xla_swapped_conv.py [--size 2] [--channels 512] [--batch 16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def taps_conv(x, w):
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, i:i + h, j:j + wd, :] for i in range(3) for j in range(3)]
    return lax.dot_general(jnp.stack(cols, axis=3), w.reshape(9, c, -1), (((3, 4), (0, 1)), ((), ())))


def median_ms(f, *args, n: int = 10) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2, help="input height and width (default 2)")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__ if hasattr(jax.lib, '__version__') else '?'}, "
          f"{jax.devices()[0].platform}; input {a.batch}x{a.size}x{a.size}x{a.channels}, 3x3 kernel, padding 1")
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (a.batch, a.size, a.size, a.channels))
    w = 0.01 * jax.random.normal(kw, (3, 3, a.channels, a.channels))
    for name, conv in (("lax", lax_conv), ("taps", taps_conv)):
        fwd = jax.jit(conv)
        grad = jax.jit(jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
        hlo = grad.lower(x, w).compile().as_text()
        convs = [ln.strip() for ln in hlo.splitlines() if " convolution(" in ln]
        print(f"\n{name}: forward {median_ms(fwd, x, w):.2f} ms, forward+gradient {median_ms(grad, x, w):.2f} ms; "
              f"{len(convs)} convolution(s) in the gradient's optimised HLO, "
              f"{sum('rhs_reversal' in c for c in convs)} with rhs_reversal")
        for c in convs:
            print("   ", c[:200])
    diff = float(jnp.max(jnp.abs(lax_conv(x, w) - taps_conv(x, w))) / jnp.max(jnp.abs(lax_conv(x, w))))
    print(f"\nmax relative difference lax vs taps (float32): {diff:.1e}")


if __name__ == "__main__":
    main()
