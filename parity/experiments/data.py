"""The experiments' data: scikit-learn's digits (shipped inside the package) and CIFAR-10's binary
files, standardised; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# ((x_train NCHW, y_train), (x_test, y_test))
Dataset = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class DataError(ValueError):
    """A dataset that is missing or malformed."""


def load_digits(seed: int = 0, test_fraction: float = 0.2, upscale: int = 1) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package), gray
    replicated to 3 channels, standardised; optionally upscaled by pixel repetition."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as e:  # pragma: no cover - the experiments extra brings it
        raise DataError("the digits data needs scikit-learn: pip install '.[experiments]'") from e
    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None].repeat(3, axis=1)
    if upscale > 1:
        x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    y = d.target.astype(np.int64)
    return _split(x, y, seed, test_fraction)


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float) -> Dataset:
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = idx[:n_test], idx[n_test:]
    mean, std = x[train].mean(axis=(0, 2, 3), keepdims=True), x[train].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    x = (x - mean) / std
    return (x[train], y[train]), (x[test], y[test])


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary file: records of 1 label byte + 3072 pixel bytes (CHW, uint8)."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path} (expected the binary version: data_batch_1.bin ... "
                        "data_batch_5.bin and test_batch.bin; nothing is downloaded)")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte records")
    rec = raw.reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: label {labels.max()} out of range 0-9; not a CIFAR-10 binary file")
    return rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def load_cifar10(data_dir: Path) -> Dataset:
    data_dir = Path(data_dir)
    train = [read_cifar_bin(data_dir / f"data_batch_{i}.bin") for i in range(1, 6)]
    xt, yt = read_cifar_bin(data_dir / "test_batch.bin")
    x, y = np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train])
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    return ((x - mean) / std, y), ((xt - mean) / std, yt)
