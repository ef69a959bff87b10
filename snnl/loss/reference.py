"""The readable oracle: materialises the b x b matrices, autograd does the rest.

Every fast path is tested against this function.  It is also a fair
competitor in the benchmarks: it is how the loss is usually written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rowwise import rows_loss


def pairwise_distance(z: torch.Tensor, distance: str) -> torch.Tensor:
    """Cosine distance 1 - <z_i/|z_i|, z_j/|z_j|>, or squared Euclidean distance."""
    if distance == "cosine":
        u = F.normalize(z, dim=1)
        return 1.0 - u @ u.T
    squared_norms = (z * z).sum(dim=1)
    # The expansion loses a few digits to cancellation for near points; clamp
    # the rounding error below zero.  Every backend uses this same formula.
    return (squared_norms[:, None] + squared_norms[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)


def reference_rows(
    z: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor, distance: str, eps: float
) -> torch.Tensor:
    """Per-row soft nearest neighbor loss, computed with b x b matrices."""
    b = z.shape[0]
    logits = -pairwise_distance(z, distance) / temperature
    self_pair = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))  # w_ii = 0 exactly
    lse_all = torch.logsumexp(logits, dim=1)

    same = (labels[:, None] == labels[None, :]) & ~self_pair
    has_same = same.any(dim=1)
    same_logits = logits.masked_fill(~same, float("-inf"))
    # logsumexp of an all -inf row has a NaN gradient: give such rows dummy
    # finite logits and select -inf afterwards (torch.where sends them no gradient).
    same_logits = same_logits.masked_fill(~has_same[:, None], 0.0)
    lse_same = torch.where(
        has_same, torch.logsumexp(same_logits, dim=1), torch.full_like(lse_all, float("-inf"))
    )
    return rows_loss(lse_all, lse_same, eps)
