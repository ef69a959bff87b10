"""Cluster positives for label-free SNNL (snnl.train.pseudo_labels): the
balanced assignment, the labels it gives, and how training takes them."""

import numpy as np
import pytest
import torch

from snnl.autoencoder import encode_in_batches
from snnl.data import labelled_subset, load_dataset
from snnl.train import loop
from snnl.train.config import TrainConfig, with_pseudo_label_clusters
from snnl.train.pseudo_labels import balanced_assignment, pseudo_labels

from .label_free_cases import label_free
from .tiny import NETWORK

SMALL = dict(NETWORK, neighbour_space="inputs")


def _blobs(sizes, rng):
    """Blobs on the axes of a 6-d space, one per size: their cosine clusters are clear."""
    return np.concatenate([np.eye(6)[c] + rng.normal(0, 0.2, (n, 6)) for c, n in enumerate(sizes)]).astype(np.float32)


def test_balanced_assignment_gives_every_cluster_the_same_mass():
    plan = balanced_assignment(np.random.default_rng(0).normal(size=(500, 7)))
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 500, rtol=1e-9)
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 7, rtol=1e-3)


def test_pseudo_labels_spread_a_large_blob_over_the_clusters_and_keep_the_firm_share():
    rng = np.random.default_rng(0)
    x = _blobs([600, 200, 200], rng)
    labels = pseudo_labels(x, 3, share=0.5, seed=0)
    clustered = labels < 3
    # equal clusters, not k-means's 600 / 200 / 200: the large blob gives points to the others
    sizes = np.bincount(labels[clustered], minlength=3)
    assert sizes.sum() == pytest.approx(500, abs=3) and sizes.min() >= 150 and sizes.max() <= 185
    # the others are classes of their own, one each
    assert np.array_equal(np.sort(labels[~clustered]), np.sort(3 + np.flatnonzero(~clustered)))
    # the firm half of each cluster comes from one blob
    truth = np.repeat([0, 1, 2], [600, 200, 200])
    for c in range(3):
        assert len(np.unique(truth[labels == c])) == 1
    assert np.array_equal(labels, pseudo_labels(x, 3, share=0.5, seed=0))
    assert (pseudo_labels(x, 3, share=1.0, seed=0) < 3).all()


def test_pseudo_label_settings_are_checked_before_training():
    with pytest.raises(ValueError, match="pseudo_labels_from is for label-free positives"):
        TrainConfig(pseudo_labels_from=2)
    free = label_free()
    for share in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="pseudo_label_share must be in"):
            free.replace(pseudo_labels_from=1, pseudo_label_share=share)
    with pytest.raises(ValueError, match="pseudo_labels_from must be an integer >= 0"):
        free.replace(pseudo_labels_from=-1)
    with pytest.raises(ValueError, match="pseudo_label_clusters must be an integer >= 2"):
        free.replace(pseudo_labels_from=1, pseudo_label_clusters=1)
    x = np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="pseudo_label_clusters is not set"):
        loop.train_autoencoder(x, None, free.replace(pseudo_labels_from=1, **SMALL), progress=False)
    # the runs fill the number in with the clusters they find, and leave every other config alone
    assert with_pseudo_label_clusters(free.replace(pseudo_labels_from=1), 7).pseudo_label_clusters == 7
    assert with_pseudo_label_clusters(free, 7) is free
    set_already = free.replace(pseudo_labels_from=1, pseudo_label_clusters=3)
    assert with_pseudo_label_clusters(set_already, 7) is set_already


def test_training_takes_the_cluster_labels_from_the_given_epoch_on(monkeypatch):
    data = labelled_subset(load_dataset("digits", "train"), 256, 0)
    config = label_free("snnl-label-free", **SMALL, epochs=3, pseudo_labels_from=1, pseudo_label_clusters=10)
    seen = []
    original = loop.batch_loss

    def spy(model, xb, yb, temperature, config, global_rows=None, partners=None, pseudo_labels=None):
        seen.append(None if pseudo_labels is None else pseudo_labels.clone())
        return original(model, xb, yb, temperature, config, global_rows, partners, pseudo_labels)

    monkeypatch.setattr(loop, "batch_loss", spy)
    with_clusters = loop.train_autoencoder(data.x, None, config, seed=0, progress=False, image_shape=(8, 8))
    batches = len(seen) // 3
    assert all(labels is None for labels in seen[:batches])  # the first epoch: partners only
    for epoch in (1, 2):
        labels = torch.cat(seen[epoch * batches : (epoch + 1) * batches])  # every point once
        clustered = labels < 10
        assert 0.45 < clustered.float().mean() < 0.55  # half of each cluster
        assert len(torch.unique(labels[~clustered])) == (~clustered).sum()  # the rest: one class each
    monkeypatch.setattr(loop, "batch_loss", original)
    without = loop.train_autoencoder(
        data.x, None, config.replace(pseudo_labels_from=None), seed=0, progress=False, image_shape=(8, 8)
    )
    assert not torch.equal(encode_in_batches(with_clusters.model, data.x), encode_in_batches(without.model, data.x))


def test_an_epochs_time_includes_clustering_its_codes(monkeypatch):
    import time

    data = labelled_subset(load_dataset("digits", "train"), 128, 0)
    config = label_free(**SMALL, epochs=2, pseudo_labels_from=1, pseudo_label_clusters=10)
    original = loop.epoch_pseudo_labels

    def slow(*args):
        labels = original(*args)
        if labels is not None:
            time.sleep(0.5)
        return labels

    monkeypatch.setattr(loop, "epoch_pseudo_labels", slow)
    history = loop.train_autoencoder(data.x, None, config, seed=0, progress=False, image_shape=(8, 8)).history
    assert history[1]["seconds"] >= 0.5  # the sleep, in the epoch that clustered
