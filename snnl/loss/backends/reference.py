"""The readable oracle: the b x b matrices in plain PyTorch, autograd does the rest.

Every fast path is tested against this function.  It is also a fair
competitor in the benchmarks: it is how the loss is usually written.  Being
plain PyTorch, it works under every transform (``torch.func``, forward-mode
AD, double backward to any order, ``torch.compile``); the fast backends use
it for what their operators do not compute themselves (forward-mode AD,
second-order gradients).
"""

from __future__ import annotations

import math

import torch

from ..options import Inputs, LossOptions
from ..rowwise import euclidean_centre, rows_loss

# the registry's description of this backend (snnl.loss.registry)
SUMMARY = "plain PyTorch with b x b matrices, autograd; the oracle the others are tested against"
MEMORY = "O(b^2)"
OPERATOR = False  # plain autograd: works under every transform as it is
CASTS_INPUTS = True


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / |x| row by row, at any norm: each row is divided by its largest
    |entry| first, so that neither the squares of 1e19 nor those of 1e-30
    leave the floating-point range (the cosine distance does not depend on
    the norm, and neither does this).  A row of zeros has no direction: it
    stays zeros (cosine distance 1 to every point) and passes no gradient.
    Every backend normalises so."""
    largest = x.detach().abs().amax(dim=1, keepdim=True)
    nonzero = largest != 0  # (a NaN row stays NaN)
    scaled = x / torch.where(nonzero, largest, 1.0)
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    return torch.where(nonzero, scaled / torch.where(nonzero, norm, 1.0), 0.0)


def pairwise_distance(a: torch.Tensor, b: torch.Tensor | None, distance: str) -> torch.Tensor:
    """Cosine distance 1 - <a_i/|a_i|, b_j/|b_j|>, or squared Euclidean
    distance, of the rows of ``a`` against those of ``b`` (None: ``a``)."""
    if distance == "cosine":
        unit = unit_rows(a)
        return 1.0 - unit @ (unit if b is None else unit_rows(b)).T
    # Of the points less their common centre (the distance is the same, and its
    # expansion loses nothing to an offset they share); the expansion still
    # loses a few digits to cancellation for near points: clamp the rounding
    # error below zero.  Every backend uses this same formula.
    centre = euclidean_centre(a, b)
    a = a - centre
    b = a if b is None else b - centre
    a_sq, b_sq = (a * a).sum(dim=1), (b * b).sum(dim=1)
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min(0.0)


def statistics(inputs: Inputs, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse_all, lse_same, has_same) per query against the keys (the queries
    themselves in the square case): the two log-sum-exps of
    ``snnl.loss.rowwise`` (lse_same -inf where the query has no same-class
    key) and whether it has one.  Query i is key ``options.self_offset + i``
    and that pair is left out (``NO_SELF_PAIR``: the keys are not the
    queries, nothing is left out)."""
    queries, keys, query_labels, key_labels, temperature = inputs
    self_offset = options.self_offset
    logits = -pairwise_distance(queries, keys, options.distance) / temperature
    if keys is None:
        keys, key_labels, self_offset = queries, query_labels, 0
    assert key_labels is not None, "keys come with their labels"
    query_index = torch.arange(queries.shape[0], device=queries.device)
    key_index = torch.arange(keys.shape[0], device=queries.device)
    self_pair = (query_index[:, None] + self_offset == key_index[None, :]) & (self_offset >= 0)
    logits = logits.masked_fill(self_pair, float("-inf"))  # w_ii = 0 exactly
    lse_all = torch.logsumexp(logits, dim=1)

    same = (query_labels[:, None] == key_labels[None, :]) & ~self_pair
    has_same = same.any(dim=1)
    # logsumexp of an all -inf row has a NaN gradient: such rows get dummy
    # finite logits, and their lse_same is selected (-inf, no gradient)
    same_logits = logits.masked_fill(~same, float("-inf")).masked_fill(~has_same[:, None], 0.0)
    lse_same = torch.where(has_same, torch.logsumexp(same_logits, dim=1), float("-inf"))
    # -inf although the row has keys (of its class): every such logit overflowed
    # (finite points, a distance / T beyond the dtype's range): NaN, never a quiet 0
    lse_all = torch.where((lse_all == -math.inf) & (~self_pair).any(dim=1), math.nan, lse_all)
    lse_same = torch.where(has_same & (lse_same == -math.inf), math.nan, lse_same)
    return lse_all, lse_same, has_same


def rows(inputs: Inputs, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-query loss, whether the query has a same-class key): see ``statistics``."""
    lse_all, lse_same, has_same = statistics(inputs, options)
    return rows_loss(lse_all, lse_same, options.eps), has_same
