"""Exact, copy-safe moves between torch tensors and numpy arrays (bfloat16 included)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

# numpy has no native bfloat16: ml_dtypes supplies it (jax uses the same type).
_BIT_VIEWS = {torch.bfloat16: (torch.int16, np.dtype(ml_dtypes.bfloat16))}


def to_numpy(t: torch.Tensor, copy: bool = True) -> np.ndarray:
    """A numpy array with the same dtype and bits as ``t``; ``copy=False`` may share its memory."""
    t = t.detach().cpu().contiguous()
    if t.dtype in _BIT_VIEWS:
        as_int, np_dtype = _BIT_VIEWS[t.dtype]
        a = t.view(as_int).numpy().view(np_dtype)
    else:
        a = t.numpy()
    return a.copy() if copy else a


def as_float32(a: object) -> np.ndarray:
    """``a`` as a numpy array, floats (bfloat16 included) in float32, other dtypes as they are."""
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a


def to_torch(a: object) -> torch.Tensor:
    """A torch copy of ``a`` (numpy or jax array) with the same dtype and bits."""
    a = np.array(a, order="C")  # a copy; ascontiguousarray would turn 0-d into 1-d
    for torch_dtype, (_, np_dtype) in _BIT_VIEWS.items():
        if a.dtype == np_dtype:
            return torch.from_numpy(a.view(np.int16)).view(torch_dtype)
    return torch.from_numpy(a)
