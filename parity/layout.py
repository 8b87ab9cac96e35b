"""torch's channels-first layout and Flax's channels-last one: the one rule that moves arrays between
them (images NCHW <-> NHWC, volumes NCDHW <-> NDHWC; other ranks as they are)."""

from __future__ import annotations

import numpy as np


def channels_last(a: np.ndarray, images: bool = True) -> np.ndarray:
    """A 4-D (image) or 5-D (volume) torch-layout array with its channels moved last (a view)."""
    return np.moveaxis(a, 1, -1) if images and np.ndim(a) in (4, 5) else a


def channels_first(a: np.ndarray, images: bool = True) -> np.ndarray:
    """The inverse of ``channels_last``."""
    return np.moveaxis(a, -1, 1) if images and np.ndim(a) in (4, 5) else a
