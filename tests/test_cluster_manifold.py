"""The manifold learners (UMAP on each backend, Isomap, t-SNE) and N2D's final clustering."""

import os

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from snnl.choices import UMAP_BACKENDS
from snnl.cluster.assign import final_clustering
from snnl.cluster.manifold import ManifoldConfig, embed
from snnl.metrics import clustering_accuracy
from snnl.optional import cuml_status, umap_learn_status

# Isomap on these tests' few points finds a disconnected neighbour graph and
# completes it (scikit-learn and scipy say so); the tests check its output.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of connected components:UserWarning"),
    pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning"),
]

HAS_UMAP = umap_learn_status()[0]


def separated_blobs(n=600, k=4, d=6, seed=0):
    return make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=0.3, random_state=seed)


@pytest.mark.parametrize("method", ["isomap", "tsne", "none"])
def test_manifold_embeddings(method):
    x, y = separated_blobs()
    points, backend = embed(x, 4, ManifoldConfig(method=method), seed=0)
    expected_dims = {"isomap": 4, "tsne": 2, "none": 6}[method]
    assert points.shape == (600, expected_dims) and points.dtype == np.float32
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")
@pytest.mark.parametrize("backend", [b for b in UMAP_BACKENDS if b != "auto"])
def test_each_umap_backend_recovers_blobs(backend):
    # cuML's UMAP runs where it is installed (GPU machines); elsewhere its case is skipped
    if backend == "cuml" and not cuml_status()[0]:
        pytest.skip("cuML is not installed (RAPIDS, CUDA only)")
    x, y = separated_blobs()
    points, used = embed(x, 4, ManifoldConfig(umap_backend=backend), seed=0)
    assert used == backend and points.shape == (600, 4)
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99
    # large data: fit on a sample, transform everything
    points, used = embed(x, 4, ManifoldConfig(umap_backend=backend, fit_sample=200), seed=0)
    assert used == f"{backend} (fit on 200)" and points.shape == (600, 4)
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")
def test_umap_leaves_torch_threads_as_they_were():
    # numba, under umap-learn, resets the OpenMP pool to its own thread count
    # (the cores) the first time it runs in a process (hence a fresh one), and
    # torch, told its count only by OMP_NUM_THREADS, follows the pool: torch
    # work after UMAP (the next seed's training) must keep the user's count
    import subprocess
    import sys

    script = (
        "import numpy as np, torch\n"
        "from snnl.cluster.manifold import ManifoldConfig, embed\n"
        "x = np.random.default_rng(0).normal(size=(2000, 10)).astype(np.float32)\n"
        "embed(x, 4, ManifoldConfig(umap_backend='umap-learn'), seed=0)\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        # the user's count from OMP_NUM_THREADS; numba's above it even on a 1-core machine
        env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]


def test_manifold_errors():
    with pytest.raises(ValueError, match="manifold must be one of"):
        ManifoldConfig(method="lle")
    with pytest.raises(ValueError, match="at most 3 dimensions"):
        embed(np.random.default_rng(0).normal(size=(50, 5)), 10, ManifoldConfig(method="tsne", n_components=10))
    with pytest.raises(ImportError, match="cuML"):
        embed(np.zeros((10, 2)), 2, ManifoldConfig(umap_backend="cuml"))


def test_final_clustering_methods_agree_on_blobs():
    x, y = separated_blobs(seed=3)
    gmm, km = final_clustering(x, 4, "gmm", 0), final_clustering(x, 4, "kmeans", 0)
    assert clustering_accuracy(gmm, km) >= 0.99 and clustering_accuracy(y, gmm) >= 0.99
    with pytest.raises(ValueError, match="cluster must be one of"):
        final_clustering(x, 4, "dbscan", 0)
