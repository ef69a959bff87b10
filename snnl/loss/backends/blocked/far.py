"""One exponential per pair on the CPU path, and the exact pass for the rows
it cannot serve.

The logits s = -d / T are <= 0 for both distances, so w_ij = exp(s_ij) needs
no per-row maximum and one exponential serves every use of a pair: both sums
of both its rows in the forward pass,

    S_i = sum_{j != i} w_ij,   N_i = sum_{j != i, y_j = y_i} w_ij,

and, from g_all = dL/d log S and g_same = dL/d log N
(``rowwise.log_sum_gradients``), the pair's derivative in the backward pass,

    dl_i/ds_ij = w_ij (a_i + [y_i = y_j] c_i),   a_i = g_all_i / S_i,  c_i = g_same_i / N_i.

The price of the common shift: a row whose sums fall below exp(-FAR[dtype])
(its neighbours, or its same-class neighbours, all more than about FAR * T
away) may have lost precision to underflow.  Such "far" rows get their
log-sum-exps and their gradient terms from an exact pass with their own
maximum: the tiles again at the row's own scale (its largest logit forward,
its log-sum-exp backward) and ``exact_forward`` / ``exact_backward`` below
for what even that scale loses.  (The fused kernels do the same on the GPU:
``snnl.kernels``.)  At ordinary temperatures there are none; at T = 0.01
random 70-d points are all far.
"""

from __future__ import annotations

import math

import torch

from .points import Points
from .tiles import GradientSums


def log_sums(sum_all, sum_same, same_count, far: float):
    """(lse_all, lse_same) from the shared-shift sums.  A same-class sum that
    underflowed to 0 for a row that has same-class neighbours (``same_count``
    > 0) is marked far, not taken for a row without any."""
    lse_all = torch.where(sum_all > 0, torch.log(sum_all), -math.inf)
    lse_same = torch.where(sum_same > 0, torch.log(sum_same), torch.where(same_count > 0, -2.0 * far, -math.inf))
    return lse_all, lse_same


def far_rows(lse_all, lse_same, far: float):
    return torch.nonzero((lse_all < -far) | (lse_same.isfinite() & (lse_same < -far))).flatten()


def shared_coefficients(lse_all, lse_same, g_all, g_same, far: float):
    """a = g_all / S and c = g_same / N for the shared-exp terms (0 where the
    exact pass computes a row's terms instead, and where N = 0), and the
    masks of rows whose all-pairs terms (far_all) or same-class terms
    (far_same) the exact pass computes."""
    has_same = lse_same.isfinite()
    far_all = lse_all < -far
    far_same = (has_same & (lse_same < -far)) | far_all
    coef = torch.where(far_all, 0.0, g_all * torch.exp(-torch.where(far_all, 0.0, lse_all)))
    shared_same = has_same & ~far_same
    same_coef = torch.where(shared_same, g_same * torch.exp(-torch.where(shared_same, lse_same, 0.0)), 0.0)
    return coef, same_coef, far_all, far_same


# The exact pass takes the far rows in chunks of this many rows against key
# blocks of EXACT_KEYS, so that its memory stays a few blocks (not far rows x
# keys: at T = 0.01 every row of random 70-d points can be far).
EXACT_ROWS = 256
EXACT_KEYS = 2048


def _exact_logits(q: Points, k: Points, rows, j0: int, j1: int):
    """Logits of the queries ``rows`` against keys j0:j1 (Euclidean distances
    clamped at 0) with the masks: not the self pair, of the same class, and
    a Euclidean distance that was not clamped (the clamp passes no gradient)."""
    s = q.logits(k, rows, slice(j0, j1))
    unclamped = None
    if q.euclidean:
        unclamped = s <= 0
        s = s.clamp_max(0.0)
    key_ids = torch.arange(j0, j1, device=s.device)
    not_self = q.ids[rows, None] != key_ids[None, :]
    same = (q.codes[rows, None] == k.codes[None, j0:j1]) & not_self
    return s, not_self, same, unclamped


def _chunks(index: torch.Tensor, n_keys: int):
    """(row chunk of ``index``, key block start, key block stop), chunk by chunk."""
    for r0 in range(0, index.numel(), EXACT_ROWS):
        chunk = index[r0 : r0 + EXACT_ROWS]
        yield chunk, [(j0, min(n_keys, j0 + EXACT_KEYS)) for j0 in range(0, n_keys, EXACT_KEYS)]


def exact_forward(index, q: Points, k: Points, lse_all, lse_same) -> None:
    """Recompute lse_all and lse_same of the queries ``index`` exactly, in
    place: a log-sum-exp over the key blocks, merged as it goes."""
    if not index.numel():
        return
    for chunk, blocks in _chunks(index, k.x.shape[0]):
        total = torch.full((chunk.numel(),), -math.inf, dtype=lse_all.dtype, device=lse_all.device)
        same_total = total.clone()
        for j0, j1 in blocks:
            s, not_self, same, _ = _exact_logits(q, k, chunk, j0, j1)
            total = torch.logaddexp(total, torch.logsumexp(s.masked_fill(~not_self, -math.inf), dim=1))
            same_total = torch.logaddexp(same_total, torch.logsumexp(s.masked_fill(~same, -math.inf), dim=1))
        lse_all[chunk] = total
        lse_same[chunk] = same_total


def exact_backward(far_all, far_same, q: Points, k: Points, lse_all, lse_same, g_all, g_same, into: GradientSums):
    """Add the far rows' gradient terms (those ``shared_coefficients`` left
    out) to the sums ``into``: sum_j H_ij x_j and sum_j H_ij of queries and
    keys, and sum H * s (the temperature's gradient)."""
    index = torch.nonzero(far_same).flatten()
    if not index.numel():
        return
    for chunk, blocks in _chunks(index, k.x.shape[0]):
        finite_same = torch.where(lse_same[chunk].isfinite(), lse_same[chunk], 0.0)
        for j0, j1 in blocks:
            s, not_self, same, unclamped = _exact_logits(q, k, chunk, j0, j1)
            p_all = torch.exp(s - lse_all[chunk, None]).masked_fill(~not_self, 0.0)
            p_same = torch.exp(s - finite_same[:, None]).masked_fill(~same, 0.0)
            h = torch.where(far_all[chunk, None], g_all[chunk, None] * p_all, 0.0) + g_same[chunk, None] * p_same
            into.share = into.share + (h * s.masked_fill(~not_self, 0.0)).sum()
            if unclamped is not None:
                h = h * unclamped
                into.hsum_q[chunk] += h.sum(1)
                into.hsum_k[j0:j1] += h.sum(0)
            into.raw_q[chunk] += (h @ k.x[j0:j1]).to(into.raw_q.dtype)
            into.raw_k[j0:j1] += (h.T @ q.x[chunk]).to(into.raw_k.dtype)
