"""Data sets that need no file: ``digits`` (ships with scikit-learn) and ``blobs``."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits, make_blobs
from sklearn.model_selection import train_test_split

# digits has no official split: a fixed, stratified 75/25 split.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits of scikit-learn, pixels scaled from 0..16 to [0, 1]."""
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def blobs(
    split: str,
    *,
    n_samples: int = 2000,
    n_features: int = 32,
    centers: int = 10,
    cluster_std: float = 1.0,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters, min-max scaled to [0, 1] per feature (so the
    logistic reconstruction applies).  Train and test come from one draw."""
    for name, value in (("n_samples", n_samples), ("n_features", n_features), ("centers", centers)):
        if int(value) != value or value < 1:
            raise ValueError(f"blobs: {name} must be a positive integer, got {value!r}")
    if n_samples < 2 * centers:
        raise ValueError(f"blobs: n_samples={n_samples} is too small for {centers} centers")
    x, y = make_blobs(
        n_samples=n_samples, n_features=n_features, centers=centers, cluster_std=cluster_std, random_state=seed
    )
    low, high = x.min(axis=0), x.max(axis=0)
    x = ((x - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=test_fraction, stratify=y, random_state=seed
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)
