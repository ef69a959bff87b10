"""The two sides of the pairs (queries and keys), prepared once per call."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...options import Inputs, LossOptions
from ...rowwise import euclidean_centre

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
    # cosine: each row's norm after dividing it by its largest |entry| (``largest``);
    # Euclidean: the squared norms of the centred points
    aux: torch.Tensor
    left: torch.Tensor | None  # L (Euclidean)
    scale: float  # 1 / T
    codes: torch.Tensor  # labels as dense int64 codes (shared by queries and keys)
    onehot: torch.Tensor | None  # (n, classes padded to 16), or None with many classes
    ids: torch.Tensor  # the rows' indices among the keys (self pairs), or past their end: none
    first_id: int | None  # ids[0], known on the host; None for a subset of the rows (``take``)
    largest: torch.Tensor | None = None  # cosine: each row's largest |entry| (0: a row of zeros)

    @property
    def x(self) -> torch.Tensor:
        """The unit rows (cosine) or the centred points (Euclidean)."""
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
            None if self.largest is None else self.largest[index],
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


def _operands(z, scale: float, centre: torch.Tensor | None) -> dict:
    """Points' fields R, aux, L and largest for the points ``z``: centred
    (Euclidean, ``centre`` given) or as unit rows (cosine; at any norm:
    ``reference.unit_rows``)."""
    n, d = z.shape
    if centre is not None:
        right = z.new_empty(n, d + 2)
        torch.sub(z, centre, out=right[:, :d])
        right[:, d] = 1.0
        centred = right[:, :d]
        sq = torch.linalg.vector_norm(centred, dim=1).square_()
        right[:, d + 1] = sq
        left = torch.cat([centred * (2.0 * scale), (-scale * sq)[:, None], z.new_full((n, 1), -scale)], 1)
        return dict(right=right, aux=sq, left=left)
    largest = z.abs().amax(dim=1)
    right = z.new_empty(n, d + 1)
    torch.div(z, torch.where(largest != 0, largest, 1.0)[:, None], out=right[:, :d])  # (a NaN row stays NaN)
    norm = torch.linalg.vector_norm(right[:, :d], dim=1)
    right[:, :d].div_(torch.where(norm != 0, norm, 1.0)[:, None])  # a row of zeros stays zeros
    right[:, d] = 1.0
    return dict(right=right, aux=norm, left=None, largest=largest)


def sides(inputs: Inputs, options: LossOptions, onehot: bool = True) -> tuple[Points, Points, torch.Tensor]:
    """(queries, keys, same_count): the prepared sides (one object in the
    square case) and the number of same-class keys of each query, itself
    excluded.  ``onehot``: make the one-hot label matrices (with few classes)."""
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
    onehot_rows = None
    if onehot and len(classes) <= ONEHOT_MAX_CLASSES:
        onehot_rows = torch.zeros(len(codes), -(-len(classes) // 16) * 16, dtype=queries.dtype, device=queries.device)
        onehot_rows[torch.arange(len(codes), device=codes.device), codes] = 1.0
    start = (0 if square else options.self_offset) if self_pairs else n_keys  # beyond the keys: no self pair
    q_ids = torch.arange(start, start + n_q, device=queries.device)
    # on the CPU a read of memory; on a GPU one synchronisation.  T <= 0 or NaN
    # computes (inf or NaN) and is refused after the computation (validation.check_values)
    t = float(temperature)
    scale = 1.0 / t if t != 0 else math.inf
    centre = euclidean_centre(queries, inputs.keys) if euclidean else None
    q = Points(
        **_operands(queries, scale, centre),
        scale=scale,
        codes=q_codes,
        onehot=None if onehot_rows is None else onehot_rows[:n_q],
        ids=q_ids,
        first_id=start,
    )
    if square:
        return q, q, same_count
    k = Points(
        **_operands(keys, scale, centre),
        scale=scale,
        codes=k_codes,
        onehot=None if onehot_rows is None else onehot_rows[n_q:],
        ids=torch.arange(n_keys, device=keys.device),
        first_id=0,
    )
    return q, k, same_count
