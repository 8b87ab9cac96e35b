"""The XLA:CPU options the bench runs JAX with, as process flags (``XLA_FLAGS``, read once when jax
starts) and, where jaxlib takes them, as options of one compile (``jax.jit(compiler_options=...)``).

The standard library only: the bench's parent process reads this before any framework.
"""

from __future__ import annotations

# XLA's own convolution kernels instead of YNNPACK's; a choice of kernel library, not of numerics (no
# fast math, no reduced precision). Measured in docs/benchmark.md, "XLA flags".
TUNED_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# Train steps also get this: XLA:CPU flattens the call graph after fusion instead of before, and its
# fusion then copies less of BatchNorm's backward into the transposes that feed weight gradients
# (docs/benchmark.md, "The fourth").
TUNED_TRAIN_FLAGS = ("--xla_backend_extra_options=xla_cpu_flatten_after_fusion",)

# TUNED_FLAGS for one compile: a per-compile option sets the whole list of YNNPACK fusion kinds, where
# the flag removes one from the default list, so this is jaxlib 0.10's default list less individual
# convolutions (tests/test_xla_conv.py compares both programs). TUNED_TRAIN_FLAGS has no per-compile
# form: jaxlib (0.10) rejects a map-valued option ("not a valid message value").
TUNED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                 "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def tuned_flags(mode: str) -> tuple[str, ...]:
    """The flags the bench adds for a JAX process on CPU running ``mode`` ("train" or "infer")."""
    return TUNED_FLAGS + (TUNED_TRAIN_FLAGS if mode == "train" else ())
