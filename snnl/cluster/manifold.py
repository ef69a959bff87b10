"""Manifold learners for N2D (McConville et al.): UMAP, Isomap, t-SNE.

UMAP runs on cuML when cuML is importable (GPU), on umap-learn otherwise,
with N2D's defaults: 20 neighbours, min_dist 0, Euclidean metric and as many
components as clusters.  Isomap (5 neighbours) and t-SNE are the
alternatives of N2D's Table 1; scikit-learn's Barnes-Hut t-SNE is limited to
at most 3 components, so it embeds in 2 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import choices, validate
from ..optional import resolve_umap_backend


@dataclass(frozen=True)
class ManifoldConfig:
    method: str = "umap"
    n_components: int | None = None  # None: the number of clusters (t-SNE: 2)
    umap_neighbors: int = 20
    umap_min_dist: float = 0.0
    umap_metric: str = "euclidean"
    umap_backend: str = "auto"
    isomap_neighbors: int = 5
    # UMAP on large data: fit on a seeded sample of this many points, then
    # transform the rest (UMAP's cost grows faster than linearly)
    fit_sample: int | None = None

    def __post_init__(self):
        validate.choice("manifold", self.method, choices.MANIFOLDS)
        validate.choice("UMAP backend", self.umap_backend, choices.UMAP_BACKENDS)
        validate.integer("n_components", self.n_components, allow_none=True)
        # UMAP's nearest-neighbour graph needs at least 2 neighbours (umap-learn
        # fails only after the autoencoder has trained otherwise)
        validate.integer("umap_neighbors", self.umap_neighbors, 2)
        validate.integer("isomap_neighbors", self.isomap_neighbors, 1)
        validate.non_negative("umap_min_dist", self.umap_min_dist)
        validate.integer("fit_sample", self.fit_sample, self.umap_neighbors + 1, allow_none=True)
        if self.method == "tsne" and self.n_components is not None and self.n_components > 3:
            raise ValueError("t-SNE (Barnes-Hut) embeds in at most 3 dimensions; set n_components <= 3")

    def check_dependencies(self) -> None:
        """The packages ``embed`` will need, before any work starts."""
        if self.method == "umap":
            resolve_umap_backend(self.umap_backend)

    def check_data(self, n_points: int) -> None:
        """What depends on the number of points to embed."""
        neighbors = {"umap": self.umap_neighbors, "isomap": self.isomap_neighbors}.get(self.method)
        if neighbors is not None and neighbors >= n_points:
            raise ValueError(
                f"{self.method} with {neighbors} neighbours needs more than {neighbors} points; there are {n_points}"
            )

    def components(self, n_clusters: int) -> int:
        if self.n_components is not None:
            return self.n_components
        return 2 if self.method == "tsne" else n_clusters


class Identity:
    """The ``none`` manifold: the points as they are."""

    def transform(self, x):
        return np.asarray(x, dtype=np.float32)


def embed(x: np.ndarray, n_clusters: int, config: ManifoldConfig, seed: int = 0) -> tuple[np.ndarray, str]:
    """The manifold embedding of ``x`` and the name of the implementation used
    (``fit_manifold`` also gives the fitted model)."""
    embedding, backend, _ = fit_manifold(x, n_clusters, config, seed)
    return embedding, backend


def fit_manifold(x: np.ndarray, n_clusters: int, config: ManifoldConfig, seed: int = 0):
    """(the manifold embedding of ``x``, the name of the implementation used,
    the fitted model that embeds new points with ``transform``, or None for
    t-SNE, which cannot)."""
    import torch  # here: the configuration above is read by the command's option parser, without torch

    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if config.method == "none":
        return x, "none", Identity()
    n_components = config.components(n_clusters)
    if config.method == "umap":
        backend = resolve_umap_backend(config.umap_backend)
        options = dict(
            n_components=n_components,
            n_neighbors=config.umap_neighbors,
            min_dist=config.umap_min_dist,
            metric=config.umap_metric,
            random_state=seed,
        )
        if backend == "cuml":
            from cuml.manifold import UMAP
        else:
            from umap import UMAP

            options["n_jobs"] = 1  # umap-learn is single-threaded anyway once random_state is set
        reducer = UMAP(**options)
        # numba (under umap-learn) sets the process's OpenMP pool to its own
        # thread count, the cores; torch, told its count only by
        # OMP_NUM_THREADS, follows the pool in all work after it (the next
        # seed's training): pin torch's count back
        torch_threads = torch.get_num_threads()
        try:
            if config.fit_sample is not None and config.fit_sample < len(x):
                chosen = np.sort(np.random.default_rng(seed).choice(len(x), size=int(config.fit_sample), replace=False))
                reducer.fit(x[chosen])
                embedding = np.asarray(reducer.transform(x), dtype=np.float32)
                return embedding, f"{backend} (fit on {config.fit_sample})", reducer
            return np.asarray(reducer.fit_transform(x), dtype=np.float32), backend, reducer
        finally:
            torch.set_num_threads(torch_threads)
    if config.method == "isomap":
        from sklearn.manifold import Isomap

        isomap = Isomap(n_neighbors=config.isomap_neighbors, n_components=n_components)
        return isomap.fit_transform(x).astype(np.float32), "sklearn-isomap", isomap
    from sklearn.manifold import TSNE

    if n_components > 3:
        raise ValueError("t-SNE (Barnes-Hut) embeds in at most 3 dimensions; set n_components <= 3")
    return (
        TSNE(n_components=n_components, init="pca", random_state=seed).fit_transform(x).astype(np.float32),
        "sklearn-tsne",
        None,
    )
