"""k-means backends and the six metrics."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from snnl.cluster.kmeans import faiss_status, kmeans
from snnl.metrics import cluster_to_label, clustering_accuracy, evaluate, silhouette


def test_accuracy_is_permutation_invariant():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_accuracy(y, np.array([5, 5, 3, 3, 9, 9])) == 1.0
    assert clustering_accuracy(y, np.array([1, 1, 0, 0, 0, 2])) == pytest.approx(5 / 6)


def test_accuracy_with_more_or_fewer_clusters_than_classes():
    y = np.array([0, 0, 0, 1, 1, 1])
    # four clusters: only two can map one-to-one to the two labels
    assert clustering_accuracy(y, np.array([0, 0, 1, 2, 2, 3])) == pytest.approx(4 / 6)
    # one cluster for two classes: half right at best
    assert clustering_accuracy(y, np.zeros(6, dtype=int)) == pytest.approx(0.5)
    assert cluster_to_label(y, np.array([7, 7, 7, 4, 4, 4])) == {7: 0, 4: 1}


def test_accuracy_input_errors():
    with pytest.raises(ValueError, match="y_true has 3 entries, y_pred 2"):
        clustering_accuracy(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(TypeError, match="integer ids"):
        clustering_accuracy(np.array([0.0, 1.0]), np.array([0, 1]))


@pytest.mark.parametrize("block_rows", [1, 7, 1024])
def test_silhouette_matches_sklearn(block_rows):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    labels = rng.integers(0, 4, size=120)
    labels[0] = 9  # a singleton cluster scores 0
    expected = silhouette_score(x, labels)
    assert silhouette(x, labels, block_rows=block_rows) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_silhouette_with_duplicate_points_and_tensor_input():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.1], [9.0, 0.0]])
    labels = np.array([0, 0, 1, 1, 2])
    assert silhouette(torch.tensor(x), labels) == pytest.approx(silhouette_score(x, labels), rel=1e-10)


def test_sampled_silhouette_estimates_the_exact_value():
    x, y = make_blobs(n_samples=3000, centers=5, random_state=2)
    exact = silhouette(x, y)
    estimate = silhouette(x, y, sample_size=600, seed=1)
    assert estimate == silhouette(x, y, sample_size=600, seed=1) and estimate != exact
    assert estimate == pytest.approx(exact, abs=0.03)
    assert silhouette(x, y, sample_size=5000) == exact  # a sample at least as large as the data is all of it
    assert evaluate(x, y, y, silhouette_sample=600, seed=1)["sil"] == estimate


def test_silhouette_undefined_is_none():
    x = np.random.default_rng(0).normal(size=(5, 2))
    assert silhouette(x, np.zeros(5, dtype=int)) is None
    assert silhouette(x, np.arange(5)) is None


def test_evaluate_all_six():
    x, y = make_blobs(n_samples=300, centers=3, random_state=0)
    pred = (y + 1) % 3
    metrics = evaluate(x, y, pred)
    assert set(metrics) == {"acc", "nmi", "ari", "sil", "chs", "dbi"}
    assert metrics["acc"] == 1.0
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred))
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(y, pred))
    assert metrics["sil"] == pytest.approx(silhouette_score(x, pred), rel=1e-9)
    one = evaluate(x, y, np.zeros(300, dtype=int))
    assert one["sil"] is None and one["chs"] is None and one["dbi"] is None


def blobs(n=2000, k=6, d=8, seed=0):
    return make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=0.5, random_state=seed)


def available_backends():
    return ["sklearn"] + (["faiss"] if faiss_status()[0] else [])


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("protocol", ["restarts", "paper"])
def test_kmeans_recovers_separated_blobs(backend, protocol):
    x, y = blobs()
    result = kmeans(x, 6, backend=backend, protocol=protocol, n_init=3, seed=0)
    assert result.backend == backend and result.labels.shape == (2000,)
    assert clustering_accuracy(y, result.labels) >= 0.99
    assert result.centers.shape == (6, 8) and result.inertia > 0


def test_backends_agree_on_the_clustering():
    backends = available_backends()
    if len(backends) < 2:
        pytest.skip("only one k-means backend is installed")
    x, _ = blobs(seed=1)
    labels = [kmeans(x, 6, backend=b, n_init=5, seed=0).labels for b in backends]
    assert clustering_accuracy(labels[0], labels[1]) >= 0.99


def test_kmeans_accepts_tensors_and_is_seeded():
    x, _ = blobs(n=500, k=3)
    a = kmeans(torch.tensor(x), 3, backend="sklearn", seed=4)
    b = kmeans(x, 3, backend="sklearn", seed=4)
    assert np.array_equal(a.labels, b.labels)


def test_kmeans_input_errors():
    with pytest.raises(ValueError, match="cannot make 10 clusters of 5 points"):
        kmeans(np.zeros((5, 2)), 10)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans(np.array([[0.0], [np.nan], [1.0]]), 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        kmeans(np.zeros((5, 2)), 2, backend="cuml")
    with pytest.raises(ValueError, match="protocol must be one of"):
        kmeans(np.zeros((5, 2)), 2, protocol="fast")


def test_auto_kmeans_is_scikit_learn_on_the_cpu():
    # measured (bench/kmeans_crossover.py): on CPUs scikit-learn reaches faiss'
    # inertia faster at every size but the smallest; faiss is kept for GPUs
    from snnl.cluster.kmeans import resolve_kmeans_backend

    x = np.random.default_rng(0).standard_normal((200, 5)).astype(np.float32)
    assert kmeans(x, 3, backend="auto", n_init=1).backend == "sklearn"
    assert resolve_kmeans_backend("auto", gpu=True) == ("faiss" if faiss_status()[1] else "sklearn")


def test_a_metric_is_one_entry_of_the_table(monkeypatch):
    """A new metric added to METRIC_TABLE is computed by evaluate and shown in
    the tables, with nothing else to change."""
    from snnl import metrics
    from snnl.report import tables

    extra = metrics.Metric("pur", "PUR", lambda c: float(np.bincount(c.y_pred).max() / len(c.y_pred)), "labels")
    monkeypatch.setattr(metrics, "METRIC_TABLE", (*metrics.METRIC_TABLE, extra))
    monkeypatch.setattr(tables, "METRIC_TABLE", metrics.METRIC_TABLE)
    x, y = make_blobs(n_samples=200, centers=3, random_state=0)
    scores = metrics.evaluate(x, y, y)
    assert list(scores) == ["acc", "nmi", "ari", "sil", "chs", "dbi", "pur"]
    assert scores["pur"] == pytest.approx(np.bincount(y).max() / len(y))
    summary = {kind: scores for kind in ("mean", "std", "best")}
    table = tables.experiment_table({"summary": summary, "seeds": [{}]}, "run")
    assert "| PUR |" in table.splitlines()[0] + "|" and f"{scores['pur']:.3f}" in table
