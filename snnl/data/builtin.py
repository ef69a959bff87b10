"""Data sets that need no file: those that ship with scikit-learn (``digits``;
the tabular ``iris``, ``wine`` and ``breast-cancer``) and ``blobs``."""

from __future__ import annotations

import math

import numpy as np

from .. import validate

# digits has no official split: a fixed, stratified 75/25 split.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits of scikit-learn, pixels scaled from 0..16 to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def _split(x: np.ndarray, y: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, stratified 75/25 split (these sets have no official one), as digits'."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def min_max(x: np.ndarray) -> np.ndarray:
    """Each feature scaled to [0, 1] over the whole set (no label read; a
    constant feature becomes 0), float32: what the logistic reconstruction takes."""
    low, high = x.min(axis=0), x.max(axis=0)
    return ((x - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)


def tabular(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A tabular set of scikit-learn (``TABULAR``), features min-max scaled to [0, 1]."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, TABULAR[name])()
    return _split(min_max(np.asarray(bunch.data, dtype=np.float64)), np.asarray(bunch.target), split)


# the tabular sets: name -> scikit-learn loader (150 x 4 in 3 classes, 178 x 13 in 3, 569 x 30 in 2)
TABULAR = {"iris": "load_iris", "wine": "load_wine", "breast-cancer": "load_breast_cancer"}


def iris(split: str) -> tuple[np.ndarray, np.ndarray]:
    return tabular("iris", split)


def wine(split: str) -> tuple[np.ndarray, np.ndarray]:
    return tabular("wine", split)


def breast_cancer(split: str) -> tuple[np.ndarray, np.ndarray]:
    return tabular("breast-cancer", split)


BLOBS_DEFAULTS = {
    "n_samples": 2000,
    "n_features": 32,
    "centers": 10,
    "cluster_std": 1.0,
    "seed": 0,
    "test_fraction": 0.25,
}


def blobs_options(**options) -> dict:
    """The ``blobs`` parameters with their defaults, checked (unknown names and
    bad values are errors that say what is allowed)."""
    unknown = sorted(set(options) - set(BLOBS_DEFAULTS))
    if unknown:
        raise ValueError(
            f"blobs: unknown option(s) {', '.join(unknown)}; the options are "
            f"{', '.join(f'{k} (default {v})' for k, v in BLOBS_DEFAULTS.items())}"
        )
    merged = {**BLOBS_DEFAULTS, **options}
    for name in ("n_samples", "n_features", "centers"):
        merged[name] = validate.integer(f"blobs: {name}", merged[name])
    if isinstance(merged["seed"], bool) or not float(merged["seed"]).is_integer() or not 0 <= merged["seed"] < 2**32:
        raise ValueError(f"blobs: seed must be an integer in [0, 2**32), got {merged['seed']!r}")
    merged["seed"] = int(merged["seed"])
    if not (math.isfinite(merged["cluster_std"]) and merged["cluster_std"] > 0):
        raise ValueError(f"blobs: cluster_std must be a finite number > 0, got {merged['cluster_std']!r}")
    if not 0 < merged["test_fraction"] < 1:
        raise ValueError(f"blobs: test_fraction must lie strictly between 0 and 1, got {merged['test_fraction']!r}")
    if merged["n_samples"] < 2 * merged["centers"]:
        raise ValueError(
            f"blobs: n_samples={merged['n_samples']} is too small for {merged['centers']} centers "
            "(at least 2 per center)"
        )
    return merged


def blobs(split: str, **options) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic Gaussian clusters, min-max scaled to [0, 1] per feature (so the
    logistic reconstruction applies).  Train and test come from one draw.
    ``options``: see ``BLOBS_DEFAULTS``."""
    o = blobs_options(**options)
    from sklearn.datasets import make_blobs
    from sklearn.model_selection import train_test_split

    x, y = make_blobs(
        n_samples=o["n_samples"],
        n_features=o["n_features"],
        centers=o["centers"],
        cluster_std=o["cluster_std"],
        random_state=o["seed"],
    )
    low, high = x.min(axis=0), x.max(axis=0)
    x = ((x - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=o["test_fraction"], stratify=y, random_state=o["seed"]
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)
