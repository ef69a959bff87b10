"""The last step of N2D: the assignment of the embedded points to clusters,
by a Gaussian mixture with full covariances (N2D's) or by k-means."""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

from .. import choices
from .kmeans import kmeans


class Centres:
    """A k-means assignment: each point to its nearest centre."""

    def __init__(self, centres: np.ndarray):
        self.centres = np.asarray(centres, dtype=np.float32)

    def predict(self, points) -> np.ndarray:
        points = np.asarray(points, dtype=np.float32)
        distances = (points**2).sum(1)[:, None] - 2.0 * points @ self.centres.T + (self.centres**2).sum(1)[None, :]
        return distances.argmin(axis=1).astype(np.int64)


class Mixture:
    """A Gaussian-mixture assignment: each point to its most probable component (as N2D's code)."""

    def __init__(self, gmm: GaussianMixture):
        self.gmm = gmm

    def predict(self, points) -> np.ndarray:
        return self.gmm.predict_proba(points).argmax(axis=1).astype(np.int64)


def fit_assignment(
    points: np.ndarray, n_clusters: int, method: str, seed: int, kmeans_backend: str = "auto", device=None
):
    """(cluster ids of ``points``, the fitted assignment, whose ``predict``
    assigns new points): a Gaussian mixture (``"gmm"``, N2D's) or k-means (``"kmeans"``)."""
    if method == "gmm":
        gmm = GaussianMixture(n_components=n_clusters, covariance_type="full", random_state=seed).fit(points)
        assignment = Mixture(gmm)
        return assignment.predict(points), assignment
    if method == "kmeans":
        clustering = kmeans(points, n_clusters, backend=kmeans_backend, seed=seed, device=device)
        return clustering.labels, Centres(clustering.centers)
    raise ValueError(f"cluster must be one of {choices.CLUSTERERS}, got {method!r}")


def final_clustering(
    points: np.ndarray, n_clusters: int, method: str, seed: int, kmeans_backend: str = "auto", device=None
) -> np.ndarray:
    """Cluster ids of ``points`` (``fit_assignment``'s, without the model)."""
    return fit_assignment(points, n_clusters, method, seed, kmeans_backend, device)[0]
