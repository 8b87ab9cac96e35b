"""The precision switches of both frameworks, set alike for a block and recorded: what "highest" and
"default" mean for each (docs/parity.md, "Precision on GPU")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PRECISIONS = ("highest", "default")


@contextlib.contextmanager
def torch_precision(device: str, precision: str) -> Iterator[dict]:
    """torch's TF32 switches for the block; restored on exit. "highest": no TF32 anywhere. "default"
    on GPU: TF32 for convolutions and matmuls alike, as JAX's default precision computes both (torch's
    own default keeps matmuls in full float32, which would not be like for like)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    tf32 = precision == "default" and device == "gpu"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield {"torch.backends.cudnn.allow_tf32": tf32, "torch.backends.cuda.matmul.allow_tf32": tf32}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def jax_precision(precision: str, x64: bool) -> Iterator[dict]:
    """jax_default_matmul_precision and jax_enable_x64 for the block, recorded."""
    import jax

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    with jax.default_matmul_precision(precision), jax.enable_x64(x64):
        yield {"jax_default_matmul_precision": precision, "jax_enable_x64": x64}
