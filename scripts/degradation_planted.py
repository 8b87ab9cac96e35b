"""The degradation experiment with a planted porting bug in the Flax twin, to show that the band
verdict (Flax's float32 curves against torch's own rounding band) catches what correct twins pass.

    python scripts/degradation_planted.py momentum   # BatchNorm momentum 0.01: Flax's 0.99 read in its convention
    python scripts/degradation_planted.py biased     # running variance without torch's n/(n-1)

Extra arguments go to `parity experiment degradation` (default: --fast --nets resnet20,plain20).
"""

from __future__ import annotations

import functools
import sys

import jaxnets.layers
from parity.__main__ import main

if __name__ == "__main__":
    bug, rest = sys.argv[1], sys.argv[2:] or ["--fast", "--nets", "resnet20,plain20"]
    if bug == "momentum":
        jaxnets.layers.BatchNorm = functools.partial(jaxnets.layers.BatchNorm, momentum=0.01)
    elif bug == "biased":
        jaxnets.layers.BatchNorm.running_var = staticmethod(lambda var, n: var)
    else:
        raise SystemExit(f"error: bug must be 'momentum' or 'biased', got {bug!r}")
    sys.exit(main(["experiment", "degradation", "--out", f"reports/degradation-planted-{bug}", *rest]))
