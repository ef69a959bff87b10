"""k-means with k-means++ initialisation, behind one interface for two backends.

- ``sklearn``: ``sklearn.cluster.KMeans`` (always available).
- ``faiss``: ``faiss.Kmeans``, on all the machine's GPUs when faiss has GPU
  support and the data lives on (or the run uses) a CUDA device, on the CPU
  otherwise.  Its
  own k-means++ initialisation is used where the installed faiss has one
  (``ClusteringInitMethod_KMEANS_PLUS_PLUS``), scikit-learn's
  ``kmeans_plusplus`` otherwise; faiss's subsampling is switched off so both
  backends fit the same points.

``auto``: faiss on the GPUs for CUDA data (or a CUDA run) when faiss has GPU
support, scikit-learn otherwise.  On the CPU scikit-learn reached the same
inertia 1.2-4.7x faster than faiss from 3,000 to 200,000 70-d codes (it stops
when the centres settle, faiss runs every iteration); faiss was faster only
at 1,000 points, by 0.07 s (bench/kmeans_crossover.py,
bench/results/kmeans-crossover-cpu-epyc-2core.json).

Protocols:
- ``restarts`` (default): ``n_init`` k-means++ runs, the best by inertia.
- ``paper``: Agarap & Azcarraga's protocol, nine single runs of 10, 20, ...,
  90 iterations, of which the ninth is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans, kmeans_plusplus

from .. import validate
from ..choices import KMEANS_BACKENDS
from ..choices import KMEANS_PROTOCOLS as PROTOCOLS

PAPER_ITERATIONS = tuple(range(10, 100, 10))


@dataclass
class KMeansResult:
    labels: np.ndarray
    centers: np.ndarray
    inertia: float
    backend: str
    device: str


def faiss_status() -> tuple[bool, bool, str]:
    """(importable, has GPU support, explanation)."""
    try:
        import faiss
    except ImportError:
        return False, False, "faiss is not installed (pip install 'snnl[faiss]', or faiss-gpu for GPUs)"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus > 0:
        return True, True, f"faiss {faiss.__version__} with {gpus} GPU(s)"
    return True, False, f"faiss {faiss.__version__}, CPU only (no GPU support in this build)"


def resolve_kmeans_backend(backend: str, gpu: bool = False) -> str:
    """The backend to use; ``gpu``: the data is on (or the run uses) a CUDA device."""
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"k-means backend must be one of {KMEANS_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faiss" if gpu and faiss_status()[1] else "sklearn"
    if backend == "faiss" and not faiss_status()[0]:
        raise ImportError(faiss_status()[2])
    return backend


def _as_numpy(x) -> tuple[np.ndarray, bool]:
    on_cuda = isinstance(x, torch.Tensor) and x.is_cuda
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32)), on_cuda


def _check(x: np.ndarray, n_clusters: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"k-means needs a 2-D array, got shape {x.shape}")
    validate.integer("n_clusters", n_clusters)
    if len(x) < n_clusters:
        raise ValueError(f"cannot make {n_clusters} clusters of {len(x)} points")
    if not np.isfinite(x).all():
        raise ValueError("k-means input contains NaN or Inf")


def _sklearn_run(x, k, n_init, max_iter, seed) -> KMeansResult:
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed)
    labels = km.fit_predict(x)
    return KMeansResult(labels.astype(np.int64), km.cluster_centers_, float(km.inertia_), "sklearn", "cpu")


def _faiss_run(x, k, n_init, max_iter, seed, use_gpu) -> KMeansResult:
    import faiss

    n, d = x.shape
    builtin_pp = hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS")
    best: KMeansResult | None = None
    # One faiss call per restart so that a restart's init is ours when faiss has no k-means++.
    for restart in range(n_init):
        options = dict(
            niter=max_iter,
            seed=seed + restart,
            gpu=use_gpu,
            verbose=False,
            max_points_per_centroid=n // k + 1,
            min_points_per_centroid=1,
        )
        if builtin_pp:
            options["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        km = faiss.Kmeans(d, k, **options)
        init = None if builtin_pp else kmeans_plusplus(x, k, random_state=seed + restart)[0]
        km.train(x, init_centroids=init)
        distances, assignment = km.index.search(x, 1)
        inertia = float(distances.sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(
                assignment[:, 0].astype(np.int64),
                np.array(km.centroids),
                inertia,
                "faiss",
                "cuda" if use_gpu else "cpu",
            )
    assert best is not None, "n_init >= 1 (checked by kmeans)"
    return best


def kmeans(
    x,
    n_clusters: int,
    *,
    backend: str = "auto",
    protocol: str = "restarts",
    n_init: int = 10,
    max_iter: int = 300,
    seed: int = 0,
    device=None,
) -> KMeansResult:
    """Cluster the rows of ``x`` (numpy array or tensor) into ``n_clusters``.

    faiss runs on every GPU of the machine when it has GPU support and either
    ``x`` is a CUDA tensor or ``device`` is a CUDA device; the points stay in
    host memory and faiss streams them.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    x, on_cuda = _as_numpy(x)
    _check(x, n_clusters)
    wants_gpu = on_cuda or (device is not None and torch.device(device).type == "cuda")
    backend = resolve_kmeans_backend(backend, wants_gpu)
    use_gpu = backend == "faiss" and wants_gpu and faiss_status()[1]

    def run(n, iterations, run_seed):
        if backend == "sklearn":
            return _sklearn_run(x, n_clusters, n, iterations, run_seed)
        return _faiss_run(x, n_clusters, n, iterations, run_seed, use_gpu)

    if protocol == "paper":
        results = [run(1, iterations, seed) for iterations in PAPER_ITERATIONS]
        return results[-1]
    return run(n_init, max_iter, seed)
