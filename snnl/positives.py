"""Which points count as the same, when there are no labels: the positives of label-free SNNL.

SNNL pulls each point towards the points that share its label.  Without
labels, each anchor of a batch is given one partner, and the loss is the
two-view form (``soft_nearest_neighbor_loss`` of a ``(b, 2, d)`` batch
without labels): each anchor's partner is its one positive, the batch's
other points and their partners its negatives.  The partner is

- ``"views"``: a random view of the anchor itself (``snnl.augment``):
  instance discrimination, the NT-Xent / InfoNCE family;
- ``"neighbours"``: one of the anchor's ``k`` nearest neighbours in the
  input space (cosine similarity), drawn at random each time, so that over
  the epochs an anchor is pulled towards its whole neighbourhood (as SCAN and
  NNCLR use neighbours);
- ``"neighbour-views"``: a random view of such a neighbour, both at once.

The neighbours are computed once, before training, from the inputs alone
(exact search: faiss when installed, scikit-learn otherwise), and every
random draw comes from a generator seeded with the run's seed and saved in
its checkpoints, so a run is reproduced exactly, also across a resume.
"""

from __future__ import annotations

import numpy as np
import torch

from . import augment
from .choices import LABEL_FREE


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's ``k`` most cosine-similar other rows."""
    if not 1 <= k < len(x):
        raise ValueError(f"neighbours: {k} nearest neighbours asked for, among {len(x)} points")
    points = np.ascontiguousarray(x, dtype=np.float32)
    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    try:
        import faiss
    except ImportError:
        faiss = None  # type: ignore[assignment]
    if faiss is not None:
        index = faiss.IndexFlatIP(points.shape[1])
        index.add(points)
        _, found = index.search(points, k + 1)
    else:
        from sklearn.neighbors import NearestNeighbors

        found = (
            NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute")
            .fit(points)
            .kneighbors(points, return_distance=False)
        )
    # each row's own index is among its k + 1 nearest (first, but for exact duplicates): drop it
    own = found == np.arange(len(points))[:, None]
    rows = [row[~mask][:k] for row, mask in zip(found, own)]
    return np.stack(rows).astype(np.int64)


class Partners:
    """Draws each anchor's partner for a label-free SNNL (see the module docstring)."""

    def __init__(self, kind: str, x: torch.Tensor, *, neighbours: int, seed: int, image_shape: tuple[int, int] | None):
        if kind not in LABEL_FREE:
            raise ValueError(f"partners are drawn for label-free positives {LABEL_FREE}, not {kind!r}")
        self.kind, self.x = kind, x
        self.neighbours = torch.from_numpy(nearest_neighbours(x.numpy(), neighbours)) if kind != "views" else None
        self.view_kind = augment.kind_of(image_shape, x.shape[1])
        self.image_shape = image_shape
        self.scale = x.std(0) if self.view_kind == "tabular" else None
        # its own stream, saved in checkpoints: drawing partners does not move the shuffling
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, global_index: torch.Tensor, rows, device) -> torch.Tensor:
        """The partners of the anchors ``x[global_index[rows]]``, on ``device``.

        Every process draws the random numbers of the whole global batch (the
        same on all of them) and uses its own ``rows``: together the
        processes draw what a single process would."""
        index = global_index[rows]
        if self.kind == "views":
            partners = self.x[index]
        else:
            assert self.neighbours is not None
            choice = torch.randint(self.neighbours.shape[1], (len(global_index),), generator=self.generator)[rows]
            partners = self.x[self.neighbours[index, choice]]
        partners = partners.to(device, non_blocking=True)
        if self.kind == "neighbours":
            return partners
        draws = augment.select(augment.draw(self.view_kind, len(global_index), self.x.shape[1], self.generator), rows)
        if self.view_kind == "image":
            assert self.image_shape is not None
            return augment.image_views(partners, self.image_shape, draws)
        assert self.scale is not None
        return augment.tabular_views(partners, self.scale, draws)
