"""The two sides of the pairs (queries and keys), prepared once per call."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...options import Inputs, LossOptions

# Up to this many classes among the keys, sums per class come from thin
# products with one-hot label matrices (columns padded to a multiple of 16:
# MKL's thin products run 4x faster with 16 columns than with 10); with more,
# labels are compared pair by pair.
ONEHOT_MAX_CLASSES = 32


@dataclass
class Points:
    """One side of the pairs (queries or keys), prepared for the tiles.

    ``right`` is R = [x, 1] (cosine) or [x, 1, |x|^2] (Euclidean): the tiles'
    products H @ R give sum_j H_ij x_j and, from the column of ones, sum_j
    H_ij at once.  The logits: s = scale (<x_i, x_j> - 1) for the cosine
    distance (one product with a scaled bias, ``torch.addmm``: no scaled copy
    of the points), s = L_i . R_j with L = [2x / T, -|x|^2 / T, -1 / T] for
    the Euclidean one."""

    right: torch.Tensor  # R (x is a view of its first columns)
    aux: torch.Tensor  # norms (cosine) or squared norms (Euclidean)
    left: torch.Tensor | None  # L (Euclidean)
    scale: float  # 1 / T
    codes: torch.Tensor  # labels as dense int64 codes (shared by queries and keys)
    onehot: torch.Tensor | None  # (n, classes padded to 16), or None with many classes
    ids: torch.Tensor  # the rows' indices among the keys (self pairs), or past their end: none
    first_id: int | None  # ids[0], known on the host; None for a subset of the rows (``take``)

    @property
    def x(self) -> torch.Tensor:
        """The unit rows (cosine) or the points (Euclidean)."""
        return self.right[:, : self.dim]

    @property
    def dim(self) -> int:
        return self.right.shape[1] - (1 if self.left is None else 2)

    @property
    def euclidean(self) -> bool:
        return self.left is not None

    def take(self, index: torch.Tensor) -> Points:
        """The rows ``index`` (the far rows' pass)."""
        return Points(
            self.right[index],
            self.aux[index],
            None if self.left is None else self.left[index],
            self.scale,
            self.codes[index],
            None if self.onehot is None else self.onehot[index],
            self.ids[index],
            None,
        )

    def logits(self, keys: Points, rows, cols) -> torch.Tensor:
        """s of the rows ``rows`` against the keys ``cols`` (slices, or index
        tensors), Euclidean distances not yet clamped."""
        if self.left is None:
            x, y = self.x[rows], keys.x[cols]
            return torch.addmm(x.new_full((), -self.scale), x, y.T, alpha=self.scale)
        return self.left[rows] @ keys.right[cols].T

    def logit_share(self, rows: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """sum_i L_i . (H R)_i over rows i0:i1 = sum_ij H_ij s_ij, from ``rows`` = (H R)_i."""
        if self.left is None:  # L = scale [x, -1]
            d = self.dim
            return self.scale * ((self.x[i0:i1] * rows[:, :d]).sum() - rows[:, d].sum())
        return (self.left[i0:i1] * rows).sum()


def _operands(z, scale: float, euclidean: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(R, aux, L): see ``Points``."""
    from ....kernels import NORM_EPS

    n, d = z.shape
    if euclidean:
        right = z.new_empty(n, d + 2)
        right[:, :d] = z
        right[:, d] = 1.0
        sq = torch.linalg.vector_norm(z, dim=1).square_()
        right[:, d + 1] = sq
        left = torch.cat([z * (2.0 * scale), (-scale * sq)[:, None], z.new_full((n, 1), -scale)], 1)
        return right, sq, left
    norm = torch.linalg.vector_norm(z, dim=1).clamp_min_(NORM_EPS)
    right = z.new_empty(n, d + 1)
    torch.div(z, norm[:, None], out=right[:, :d])
    right[:, d] = 1.0
    return right, norm, None


def sides(inputs: Inputs, options: LossOptions) -> tuple[Points, Points, torch.Tensor]:
    """(queries, keys, same_count): the prepared sides (one object in the
    square case) and the number of same-class keys of each query, itself
    excluded."""
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    square, euclidean = inputs.square, options.euclidean
    labels = query_labels if square else torch.cat([query_labels, key_labels])
    classes, codes = torch.unique(labels, return_inverse=True)
    n_q = queries.shape[0]
    q_codes, k_codes = (codes, codes) if square else (codes[:n_q], codes[n_q:])
    n_keys = keys.shape[0]
    self_pairs = square or options.self_offset >= 0
    same_count = torch.bincount(k_codes, minlength=len(classes))[q_codes] - int(self_pairs)
    onehot = None
    if len(classes) <= ONEHOT_MAX_CLASSES:
        onehot = torch.zeros(len(codes), -(-len(classes) // 16) * 16, dtype=queries.dtype, device=queries.device)
        onehot[torch.arange(len(codes), device=codes.device), codes] = 1.0
    start = (0 if square else options.self_offset) if self_pairs else n_keys  # beyond the keys: no self pair
    q_ids = torch.arange(start, start + n_q, device=queries.device)
    scale = 1.0 / float(temperature)  # on the CPU a read of memory; on a GPU one synchronisation
    q = Points(
        *_operands(queries, scale, euclidean), scale, q_codes, None if onehot is None else onehot[:n_q], q_ids, start
    )
    if square:
        return q, q, same_count
    k = Points(
        *_operands(keys, scale, euclidean),
        scale,
        k_codes,
        None if onehot is None else onehot[n_q:],
        torch.arange(n_keys, device=keys.device),
        0,
    )
    return q, k, same_count
