"""The readable oracle: materialises the b x b matrices, autograd does the rest.

Every fast path is tested against this function.  It is also a fair
competitor in the benchmarks: it is how the loss is usually written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rowwise import rows_loss


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """Cosine distance 1 - <a_i/|a_i|, b_j/|b_j|>, or squared Euclidean distance."""
    if distance == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    # The expansion loses a few digits to cancellation for near points; clamp
    # the rounding error below zero.  Every backend uses this same formula.
    a_sq, b_sq = (a * a).sum(dim=1), (b * b).sum(dim=1)
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min(0.0)


def reference_rows(
    z: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor, distance: str, eps: float, *,
    keys: torch.Tensor | None = None, key_labels: torch.Tensor | None = None, offset: int = 0,
) -> torch.Tensor:
    """Per-row soft nearest neighbor loss, computed with b x b matrices.

    Rows of ``z`` are compared with ``keys`` (default: ``z`` itself); row i is
    key ``offset + i``, and that pair is left out.
    """
    if keys is None:
        keys, key_labels = z, labels
    logits = -pairwise_distance(z, keys, distance) / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    self_pair = torch.zeros_like(logits, dtype=torch.bool)
    self_pair[rows, rows + offset] = True
    logits = logits.masked_fill(self_pair, float("-inf"))  # w_ii = 0 exactly
    lse_all = torch.logsumexp(logits, dim=1)

    same = (labels[:, None] == key_labels[None, :]) & ~self_pair
    has_same = same.any(dim=1)
    same_logits = logits.masked_fill(~same, float("-inf"))
    # logsumexp of an all -inf row has a NaN gradient: give such rows dummy
    # finite logits and select -inf afterwards (torch.where sends them no gradient).
    same_logits = same_logits.masked_fill(~has_same[:, None], 0.0)
    lse_same = torch.where(
        has_same, torch.logsumexp(same_logits, dim=1), torch.full_like(lse_all, float("-inf"))
    )
    return rows_loss(lse_all, lse_same, eps)
