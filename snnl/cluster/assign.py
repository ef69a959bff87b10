"""The last step of N2D: the assignment of the embedded points to clusters,
by a Gaussian mixture with full covariances (N2D's) or by k-means."""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

from .. import choices
from .kmeans import kmeans


def final_clustering(
    points: np.ndarray, n_clusters: int, method: str, seed: int, kmeans_backend: str = "auto", device=None
) -> np.ndarray:
    """Cluster ids of ``points``: a Gaussian mixture (``"gmm"``, N2D's) or k-means (``"kmeans"``)."""
    if method == "gmm":
        gmm = GaussianMixture(n_components=n_clusters, covariance_type="full", random_state=seed).fit(points)
        return gmm.predict_proba(points).argmax(axis=1).astype(np.int64)  # as N2D's code assigns
    if method == "kmeans":
        return kmeans(points, n_clusters, backend=kmeans_backend, seed=seed, device=device).labels
    raise ValueError(f"cluster must be one of {choices.CLUSTERERS}, got {method!r}")
