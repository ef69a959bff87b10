"""Cluster positives for label-free SNNL: pseudo-labels from the codes themselves.

Label-free SNNL (``snnl.train.positives``) pulls each point towards one
partner; nothing in it says which points form a class.  From epoch
``TrainConfig.pseudo_labels_from`` on, before every epoch the training codes
are clustered and each point's cluster becomes its label for that epoch: the
loss's multi-view form with labels (SupCon's) then makes an anchor's
positives its partner and, where it is confident, its cluster mates and
their partners.

The clusters are k-means's centres with a balanced assignment: the points
are spread over the centres in equal shares (Sinkhorn-Knopp on the cosine
similarities, the equipartition of SeLa and SwAV), because plain k-means
on these codes splits large, spread-out classes and merges close ones
(cluster sizes 4,100-9,500 on Fashion-MNIST's 6,000-image classes), and
training on those labels locks the split in.  Only the share
``TrainConfig.pseudo_label_share`` of each cluster that it holds most firmly
gets the cluster as a label; every other point is a class of its own, its
partner its only positive, as before.

Everything is computed from the model and the run's seed, so a resumed run
clusters exactly as the uninterrupted one did, and no label is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import distributed, validate

if TYPE_CHECKING:
    from .config import TrainConfig

# Sinkhorn-Knopp: the entropic regularisation on cosine similarities (SwAV's 0.05)
# and its iterations (the column sums are equal to 1e-3 relative by then)
SINKHORN_EPSILON = 0.05
SINKHORN_ITERATIONS = 100


def balanced_assignment(
    similarity: np.ndarray, epsilon: float = SINKHORN_EPSILON, iterations: int = SINKHORN_ITERATIONS
) -> np.ndarray:
    """The (n, k) transport plan of ``n`` points to ``k`` clusters of equal
    mass (each row sums to 1 / n, each column to 1 / k) closest to the
    similarities at entropic regularisation ``epsilon``: Sinkhorn-Knopp."""
    similarity = np.asarray(similarity, dtype=np.float64)
    n, k = similarity.shape
    plan = np.exp((similarity - similarity.max()) / epsilon)
    for _ in range(iterations):
        plan /= plan.sum(axis=0, keepdims=True) * k
        plan /= plan.sum(axis=1, keepdims=True) * n
    return plan


def pseudo_labels(codes: np.ndarray, clusters: int, share: float, seed: int) -> np.ndarray:
    """(n,) int64 labels of the codes: for the ``share`` of each balanced
    cluster held most firmly its id (0 .. clusters - 1), for every other row
    a class of its own (``clusters + row``)."""
    from ..cluster.kmeans import kmeans

    validate.integer("clusters", clusters, 2)
    codes = np.asarray(codes, dtype=np.float32)
    # k-means's default restarts, as the read-out's: with 3, one run in three on Fashion-MNIST
    # codes (seed 1, epoch 10) ended in a worse optimum (inertia 14,387 against 13,947; ACC
    # 0.615 against 0.684), and training on its labels locks that split in
    centres = kmeans(codes, clusters, seed=seed).centers
    centres = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
    plan = balanced_assignment(unit @ centres.T)
    cluster = plan.argmax(axis=1)
    firmness = plan.max(axis=1)
    labels = clusters + np.arange(len(codes), dtype=np.int64)
    for c in range(clusters):
        members = np.flatnonzero(cluster == c)
        kept = members[np.argsort(-firmness[members], kind="stable")[: round(share * len(members))]]
        labels[kept] = c
    return labels


def epoch_pseudo_labels(model, x: torch.Tensor, config: TrainConfig, seed: int, epoch: int) -> torch.Tensor | None:
    """The pseudo-labels epoch ``epoch`` (from 0) of ``config`` trains with:
    ``pseudo_labels`` of the model's codes of ``x``, k-means seeded by the
    run's seed and the epoch; None before ``config.pseudo_labels_from``.

    Under torch.distributed the main process clusters and the others receive
    its labels, as with the neighbour table (snnl.train.positives): every
    process trains with the same ones, which k-means on each would not
    promise (a faiss or multithreaded sum may differ in its last bits)."""
    from ..autoencoder import encode_in_batches

    if config.pseudo_labels_from is None or epoch < config.pseudo_labels_from:
        return None
    assert config.pseudo_label_clusters is not None, "checked before training (snnl.train.loop)"
    labels = None
    if distributed.is_main_process():
        codes = encode_in_batches(model, x).numpy()
        kmeans_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        labels = pseudo_labels(codes, config.pseudo_label_clusters, config.pseudo_label_share, kmeans_seed)
    return torch.from_numpy(distributed.broadcast_from_main(labels))
