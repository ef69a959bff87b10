"""The six clustering metrics of the paper's tables.

ACC (best one-to-one cluster-to-label map, Hungarian algorithm), NMI
(arithmetic normalisation, scikit-learn's default), ARI, silhouette
(Euclidean), Calinski-Harabasz and Davies-Bouldin.  The silhouette is exact
and O(n^2) in time but computed in row blocks, so memory stays O(block * n);
on a CUDA device the blocks run there (or cuML's silhouette, when cuML is
installed).  Metrics that are undefined for a
clustering (e.g. a single cluster) are reported as None, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
)


def _labels(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer ids, got dtype {a.dtype}")
    return a


def contingency(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts[cluster, label], cluster ids, label ids)."""
    clusters, pred_idx = np.unique(y_pred, return_inverse=True)
    classes, true_idx = np.unique(y_true, return_inverse=True)
    counts = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(counts, (pred_idx, true_idx), 1)
    return counts, clusters, classes


def cluster_to_label(y_true, y_pred) -> dict[int, int]:
    """The one-to-one map that maximises agreement.  With more clusters than
    classes some clusters map to no label (they count as errors), and vice versa."""
    counts, clusters, classes = contingency(_labels(y_true, "y_true"), _labels(y_pred, "y_pred"))
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols)}


def clustering_accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries, y_pred {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot score an empty clustering")
    counts, _, _ = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y_true))


def silhouette(
    x,
    labels,
    *,
    block_rows: int = 1024,
    device: str | torch.device | None = None,
    sample_size: int | None = None,
    seed: int = 0,
) -> float | None:
    """Mean silhouette coefficient (Euclidean), exact, in row blocks.

    Matches ``sklearn.metrics.silhouette_score``: a point alone in its cluster
    scores 0; undefined (None) unless 2 <= number of clusters <= n - 1.
    ``sample_size``: score a seeded random subset of that many points against
    each other (scikit-learn's ``sample_size``), O(sample^2) instead of O(n^2).
    """
    labels = _labels(labels, "labels")
    if sample_size is not None and sample_size < len(labels):
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels), size=int(sample_size), replace=False))
        x = x[torch.as_tensor(chosen)] if isinstance(x, torch.Tensor) else np.asarray(x)[chosen]
        labels = labels[chosen]
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if device is not None:
        x = x.to(device)
    x = x.to(torch.float64)
    n = len(labels)
    if x.shape[0] != n:
        raise ValueError(f"x has {x.shape[0]} rows but labels has {n}")
    clusters, idx = np.unique(labels, return_inverse=True)
    k = len(clusters)
    if not 2 <= k <= n - 1:
        return None
    idx_t = torch.as_tensor(idx, device=x.device)
    sizes = torch.bincount(idx_t, minlength=k).to(x.dtype)
    one_hot = torch.zeros(n, k, dtype=x.dtype, device=x.device)
    one_hot[torch.arange(n, device=x.device), idx_t] = 1.0
    sq = (x * x).sum(dim=1)
    scores = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        d2 = (sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)).clamp_min_(0.0)
        d2[torch.arange(stop - start, device=x.device), torch.arange(start, stop, device=x.device)] = 0.0
        sums = d2.sqrt_() @ one_hot  # (block, k): distance sums to each cluster
        own = idx_t[start:stop]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp_min(1.0)
        mean_other = sums / sizes[None, :]
        mean_other.scatter_(1, own[:, None], float("inf"))
        b = mean_other.min(dim=1).values
        s = (b - a) / torch.maximum(a, b)
        scores[start:stop] = torch.where(own_size > 1, torch.nan_to_num(s, nan=0.0), torch.zeros_like(s))
    return float(scores.mean())


def silhouette_backend(device=None) -> str:
    """cuML when it imports and a CUDA device is in use, else this module's blocked computation."""
    from .optional import cuml_status

    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return "cuml" if on_cuda and cuml_status()[0] else "snnl"


def _silhouette_cuml(x, labels, sample_size=None, seed=0) -> float | None:
    from cuml.metrics.cluster import silhouette_score

    if sample_size is not None and sample_size < len(labels):
        chosen = np.sort(np.random.default_rng(seed).choice(len(labels), size=int(sample_size), replace=False))
        x, labels = np.asarray(x)[chosen], labels[chosen]
    k = len(np.unique(labels))
    if not 2 <= k <= len(labels) - 1:
        return None
    return float(silhouette_score(np.asarray(x, dtype=np.float32), labels))


@dataclass(frozen=True)
class Clustering:
    """What a metric reads: the points clustered, the true labels, the
    assignment, and the options of the exact but costly silhouette."""

    x: np.ndarray | torch.Tensor
    y_true: np.ndarray
    y_pred: np.ndarray
    device: str | torch.device | None = None
    silhouette_sample: int | None = None
    seed: int = 0

    @property
    def x_numpy(self) -> np.ndarray:
        return self.x.detach().cpu().numpy() if isinstance(self.x, torch.Tensor) else np.asarray(self.x)

    @property
    def defined(self) -> bool:
        """Whether the indices of the points are defined: 2 <= clusters <= points - 1."""
        return 2 <= len(np.unique(self.y_pred)) <= len(self.y_pred) - 1


@dataclass(frozen=True)
class Metric:
    """One metric: its key in the records, its title in every table, how it is
    computed, whether it compares with the true labels (``"labels"``) or reads
    the points and the assignment alone (``"points"``), and how it is printed.
    A new metric is one entry of ``METRIC_TABLE``."""

    name: str
    title: str
    compute: Callable[[Clustering], float | None]
    reads: Literal["labels", "points"]
    decimals: int = 3  # Calinski-Harabasz is in the hundreds or thousands: one decimal

    def format(self, value) -> str:
        return "n/a" if value is None else f"{value:.{self.decimals}f}"


def _silhouette(c: Clustering) -> float | None:
    if silhouette_backend(c.device) == "cuml":
        return _silhouette_cuml(c.x_numpy, c.y_pred, c.silhouette_sample, c.seed)
    return silhouette(c.x, c.y_pred, device=c.device, sample_size=c.silhouette_sample, seed=c.seed)


def _calinski_harabasz(c: Clustering) -> float | None:
    return float(calinski_harabasz_score(c.x_numpy, c.y_pred)) if c.defined else None


def _davies_bouldin(c: Clustering) -> float | None:
    return float(davies_bouldin_score(c.x_numpy, c.y_pred)) if c.defined else None


# The paper's order: ``evaluate`` computes them in it, the reports and tables iterate it.
METRIC_TABLE = (
    Metric("acc", "ACC", lambda c: clustering_accuracy(c.y_true, c.y_pred), "labels"),
    Metric("nmi", "NMI", lambda c: float(normalized_mutual_info_score(c.y_true, c.y_pred)), "labels"),
    Metric("ari", "ARI", lambda c: float(adjusted_rand_score(c.y_true, c.y_pred)), "labels"),
    Metric("sil", "SIL", _silhouette, "points"),
    Metric("chs", "CHS", _calinski_harabasz, "points", decimals=1),
    Metric("dbi", "DBI", _davies_bouldin, "points"),
)
METRICS = tuple(metric.name for metric in METRIC_TABLE)


def evaluate(
    x, y_true, y_pred, *, device=None, silhouette_sample: int | None = None, seed: int = 0
) -> dict[str, float | None]:
    """All six metrics for a clustering ``y_pred`` of points ``x`` with true labels.

    ``silhouette_sample``: estimate the silhouette on that many points (the
    exact value is O(n^2); the other five metrics are always exact)."""
    clustering = Clustering(x, _labels(y_true, "y_true"), _labels(y_pred, "y_pred"), device, silhouette_sample, seed)
    return {metric.name: metric.compute(clustering) for metric in METRIC_TABLE}
