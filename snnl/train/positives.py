"""Which points count as the same, when there are no labels: the positives of label-free SNNL.

SNNL pulls each point towards the points that share its label.  Without
labels, each anchor of a batch is given a partner (or ``TrainConfig.partners``
of them), and the loss is the multi-view form (``soft_nearest_neighbor_loss``
of a ``(b, 1 + partners, d)`` batch without labels): an anchor's partners are
its positives, the batch's other points and their partners its negatives.
A partner is

- ``"views"``: a random view of the anchor itself (``snnl.train.augment``):
  instance discrimination, the NT-Xent / InfoNCE family;
- ``"neighbours"``: one of the anchor's ``k`` nearest neighbours, drawn at
  random each time, so that over the epochs an anchor is pulled towards its
  whole neighbourhood (as SCAN and NNCLR use neighbours);
- ``"neighbour-views"``: a random view of such a neighbour, both at once.

The neighbours are computed once, before training, from the inputs alone
(exact search: faiss when installed, scikit-learn otherwise), in one of two
spaces (``TrainConfig.neighbour_space``):

- ``"inputs"``: the cosine similarity of the inputs themselves;
- ``"umap"``: the Euclidean distance in a 10-d UMAP embedding of the inputs
  (N2D's settings, ``NEIGHBOUR_UMAP``, seeded with the run's seed).  UMAP's
  neighbours follow the data's manifold: see ``snnl.train.config`` for what they
  changed on Fashion-MNIST.

From ``TrainConfig.pseudo_labels_from`` on, an anchor's cluster in the
codes adds positives (``snnl.train.pseudo_labels``).

The neighbour table and every random draw (from a generator seeded with the
run's seed) are saved in the checkpoints, so a run is reproduced exactly,
also across a resume, which does not search again.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed, validate
from ..choices import LABEL_FREE, NEIGHBOUR_SPACES
from ..cluster.manifold import ManifoldConfig
from . import augment

# The embedding "umap" neighbours are searched in: N2D's UMAP (20 neighbours,
# min_dist 0, Euclidean) in 10 dimensions (N2D's, its data sets' number of classes)
NEIGHBOUR_UMAP = ManifoldConfig(method="umap", n_components=10)
METRICS = ("cosine", "euclidean")


def nearest_neighbours(x: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """(n, k) indices of each row's ``k`` nearest other rows: the most
    cosine-similar (``metric="cosine"``) or the closest (``"euclidean"``)."""
    if not 1 <= k < len(x):
        raise ValueError(f"neighbours: {k} nearest neighbours asked for, among {len(x)} points")
    validate.choice("metric", metric, METRICS)
    points = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":  # the inner product of unit rows
        points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    try:
        import faiss
    except ImportError:
        faiss = None  # type: ignore[assignment]
    if faiss is not None:
        index = faiss.IndexFlatIP(points.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(points.shape[1])
        index.add(points)
        # faiss's wheels bring an OpenMP runtime of their own, whose threads would
        # otherwise number the cores whatever torch was told: as many as torch's
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(torch.get_num_threads())
        try:
            _, found = index.search(points, k + 1)
        finally:
            faiss.omp_set_num_threads(previous)
    else:
        from sklearn.neighbors import NearestNeighbors

        found = (
            NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute")
            .fit(points)
            .kneighbors(points, return_distance=False)
        )
    # each row's own index is among its k + 1 nearest (first, but for exact duplicates): drop it
    own = found == np.arange(len(points))[:, None]
    rows = [row[~mask][:k] for row, mask in zip(found, own)]
    return np.stack(rows).astype(np.int64)


def neighbour_table(x: np.ndarray, k: int, space: str = "inputs", seed: int = 0) -> np.ndarray:
    """(n, k) indices of each row's ``k`` nearest neighbours in ``space`` (the module docstring)."""
    validate.choice("neighbour_space", space, NEIGHBOUR_SPACES)
    if space == "inputs":
        return nearest_neighbours(x, k)
    from ..cluster.manifold import embed

    embedding, _ = embed(x, NEIGHBOUR_UMAP.components(0), NEIGHBOUR_UMAP, seed=seed)
    return nearest_neighbours(embedding, k, metric="euclidean")


class Partners:
    """Draws each anchor's partner for a label-free SNNL (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        x: torch.Tensor,
        *,
        neighbours: int,
        seed: int,
        image_shape: tuple[int, int] | None,
        space: str = "inputs",
        per_anchor: int = 1,
    ):
        if kind not in LABEL_FREE:
            raise ValueError(f"partners are drawn for label-free positives {LABEL_FREE}, not {kind!r}")
        validate.integer("partners per anchor", per_anchor)
        validate.choice("neighbour_space", space, NEIGHBOUR_SPACES)
        self.kind, self.x, self.k, self.space, self.seed = kind, x, neighbours, space, seed
        self.per_anchor = per_anchor
        self._neighbours: torch.Tensor | None = None  # searched on first use, or restored from a checkpoint
        self.view_kind = augment.kind_of(image_shape, x.shape[1])
        self.image_shape = image_shape
        self.scale = x.std(0) if self.view_kind == "tabular" else None
        # its own stream, saved in checkpoints: drawing partners does not move the shuffling
        self.generator = torch.Generator().manual_seed(seed + 1)

    @property
    def neighbours(self) -> torch.Tensor:
        """The (n, k) table of each row's neighbours, searched on first use (``search``)."""
        return self.search()

    def search(self) -> torch.Tensor:
        """The neighbour table, searched now unless searched or restored already.

        Under torch.distributed the main process searches and the others
        receive its table: every process draws from the same one, although
        UMAP's output can change with a machine's thread count."""
        if self.kind == "views":
            raise ValueError("'views' partners are views of the anchor itself: they have no neighbours")
        if self._neighbours is None:
            table = (
                neighbour_table(self.x.numpy(), self.k, self.space, self.seed)
                if distributed.is_main_process()
                else None
            )
            self._neighbours = torch.from_numpy(distributed.broadcast_from_main(table))
        return self._neighbours

    @property
    def search_pending(self) -> str | None:
        """What is still to be searched, said for a progress note, or None
        (views only, or the table already searched or restored)."""
        if self.kind == "views" or self._neighbours is not None:
            return None
        where = "the inputs" if self.space == "inputs" else f"a {NEIGHBOUR_UMAP.n_components}-d UMAP embedding"
        return f"the {self.k} nearest neighbours of {len(self.x):,} points in {where}"

    def state(self) -> dict:
        """What a checkpoint keeps: the generator, and the neighbour table once
        searched (a resume then neither searches nor embeds again)."""
        state: dict = {"generator": self.generator.get_state()}
        if self._neighbours is not None:
            state["neighbours"] = self._neighbours.to(torch.int32)  # fewer than 2**31 rows: half the bytes
        return state

    def set_state(self, state) -> None:
        """Restore ``state()`` (a checkpoint of 0.2.0.dev0 before it held the
        generator's state alone: the table is then searched again, as it was)."""
        if isinstance(state, torch.Tensor):
            self.generator.set_state(state)
            return
        self.generator.set_state(state["generator"])
        if "neighbours" in state:
            table = state["neighbours"]
            if tuple(table.shape) != (len(self.x), self.k):
                raise ValueError(
                    f"the checkpoint's neighbour table is {tuple(table.shape)}; these {len(self.x)} points with "
                    f"{self.k} neighbours need ({len(self.x)}, {self.k}): the checkpoint belongs to other data"
                )
            self._neighbours = table.to(torch.int64)

    def __call__(self, global_index: torch.Tensor, rows, device) -> torch.Tensor:
        """The partners of the anchors ``x[global_index[rows]]``, on ``device``:
        ``per_anchor`` of each, every anchor's first partner first, then every
        anchor's second, and so on.

        Every process draws the random numbers of the whole global batch (the
        same on all of them) and uses its own ``rows``: together the
        processes draw what a single process would."""
        index = global_index[rows]
        m, n = self.per_anchor, len(global_index)
        if self.kind == "views":
            partners = self.x[index].repeat(m, 1)
        else:
            shape = (n,) if m == 1 else (n, m)  # one partner: the stream of earlier versions
            choice = torch.randint(self.k, shape, generator=self.generator).reshape(n, m)[rows]
            # every anchor's first partner, then every anchor's second, ...
            partners = self.x[self.neighbours[index[:, None], choice].T.reshape(-1)]
        partners = partners.to(device, non_blocking=True)
        if self.kind == "neighbours":
            return partners
        draws = augment.draw(self.view_kind, n * m, self.x.shape[1], self.generator)
        # this process's rows of each of the m blocks of views (one block: its rows, as ever)
        draws = augment.select(draws, (torch.arange(m)[:, None] * n + torch.as_tensor(rows)[None]).reshape(-1))
        if self.view_kind == "image":
            assert self.image_shape is not None
            return augment.image_views(partners, self.image_shape, draws)
        assert self.scale is not None
        return augment.tabular_views(partners, self.scale, draws)
