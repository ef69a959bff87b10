"""One exponential per pair: the algebra the fast paths share (``blocked`` on
the CPU, the Triton kernels on the GPU).

The logits s = -d / T are <= 0 for both distances, so w_ij = exp(s_ij) needs
no per-row maximum and one exponential serves every use of a pair: both sums
of both its rows in the forward pass,

    S_i = sum_{j != i} w_ij,   N_i = sum_{j != i, y_j = y_i} w_ij,

and, from the upstream coefficients g_all = dl/d log S and g_same = dl/d log N
(``rowwise.row_coefficients``), the pair's derivative in the backward pass,

    dl_i/ds_ij = w_ij (a_i + [y_i = y_j] c_i),   a_i = g_all_i / S_i,  c_i = g_same_i / N_i.

The price of the common shift: a row whose sums fall below exp(-FAR[dtype])
(its neighbours, or its same-class neighbours, all more than about FAR * T
away) may have lost precision to underflow.  Such "far" rows get their
log-sum-exps and their gradient terms from an exact pass with their own
maximum: on the CPU the tiles again at the row's own scale (its largest
logit forward, its log-sum-exp backward) and ``exact_forward`` /
``exact_backward`` below for what even that scale loses; on the GPU
``snnl.kernels.rows``' finish_forward and the backward kernel's FAR_PASS,
with no host synchronisation.  At ordinary temperatures there are none; at
T = 0.01 random 70-d points are all far.
"""

from __future__ import annotations

import math

import torch

from .rowwise import row_coefficients

# A row whose sum of exp(s) is below exp(-FAR) may have lost precision to
# underflow.  fp32: exp() is subnormal below exp(-87) (the CPU path drops such
# terms: they are slow to compute); with the row's sum at least exp(-50), all
# its terms below exp(-87) together (at most 2^17 of them) are under
# exp(-75), far below one rounding error of the sum.
FAR = {torch.float32: 50.0, torch.float64: 600.0}


def logits(a, b, aux_a, aux_b, temperature, euclidean: bool):
    """s = -d / T of rows ``a`` against rows ``b``, and the mask of Euclidean
    distances that were not clamped at 0 (the clamp passes no gradient).
    ``aux`` are the squared norms (Euclidean; unused for the cosine distance)."""
    dots = a @ b.T
    if euclidean:
        raw = aux_a[:, None] + aux_b[None, :] - 2.0 * dots
        return -raw.clamp_min(0.0) / temperature, raw >= 0
    return (dots - 1.0) / temperature, None


def log_sums(sum_all, sum_same, same_count, far: float):
    """(lse_all, lse_same) from the shared-shift sums.  A same-class sum that
    underflowed to 0 for a row that has same-class neighbours (``same_count``
    > 0) is marked far, not taken for a row without any."""
    lse_all = torch.where(sum_all > 0, torch.log(sum_all), -math.inf)
    lse_same = torch.where(sum_same > 0, torch.log(sum_same), torch.where(same_count > 0, -2.0 * far, -math.inf))
    return lse_all, lse_same


def far_rows(lse_all, lse_same, far: float):
    return torch.nonzero((lse_all < -far) | (lse_same.isfinite() & (lse_same < -far))).flatten()


def shared_coefficients(lse_all, lse_same, eps: float, grad_rows, far: float):
    """a = g_all / S and c = g_same / N for the shared-exp terms (0 where the
    exact pass computes a row's terms instead, and where N = 0), the upstream
    coefficients themselves, and the masks of rows whose all-pairs terms
    (far_all) or same-class terms (far_same) the exact pass computes."""
    g_all, g_same = row_coefficients(lse_all, lse_same, eps, grad_rows)
    has_same = lse_same.isfinite()
    far_all = lse_all < -far
    far_same = (has_same & (lse_same < -far)) | far_all
    coef = torch.where(far_all, 0.0, g_all * torch.exp(-torch.where(far_all, 0.0, lse_all)))
    shared_same = has_same & ~far_same
    same_coef = torch.where(shared_same, g_same * torch.exp(-torch.where(shared_same, lse_same, 0.0)), 0.0)
    return coef, same_coef, g_all, g_same, far_all, far_same


# The exact pass takes the far rows in chunks of this many rows against key
# blocks of EXACT_KEYS, so that its memory stays a few blocks (not far rows x
# keys: at T = 0.01 every row of random 70-d points can be far).
EXACT_ROWS = 256
EXACT_KEYS = 2048


def _exact_logits(rows, keys, row_labels, key_labels, row_ids, key_ids, row_aux, key_aux, temperature, euclidean):
    """Logits of a few rows against a block of keys with the masks (self
    pairs, same class, unclamped distances)."""
    s, unclamped = logits(rows, keys, row_aux, key_aux, temperature, euclidean)
    not_self = row_ids[:, None] != key_ids[None, :]
    same = (row_labels[:, None] == key_labels[None, :]) & not_self
    return s, not_self, same, unclamped


def _chunks(index: torch.Tensor, n_keys: int):
    """(row chunk of ``index``, key block start, key block stop), chunk by chunk."""
    for r0 in range(0, index.numel(), EXACT_ROWS):
        chunk = index[r0 : r0 + EXACT_ROWS]
        yield chunk, [(j0, min(n_keys, j0 + EXACT_KEYS)) for j0 in range(0, n_keys, EXACT_KEYS)]


def exact_forward(index, q, k, q_labels, k_labels, q_ids, q_aux, k_aux, temperature, euclidean, lse_all, lse_same):
    """Recompute lse_all and lse_same of the rows ``index`` exactly, in place:
    a log-sum-exp over the key blocks, merged as it goes."""
    if not index.numel():
        return
    key_ids = torch.arange(k.shape[0], device=k.device)
    for chunk, blocks in _chunks(index, k.shape[0]):
        total = torch.full((chunk.numel(),), -math.inf, dtype=lse_all.dtype, device=lse_all.device)
        same_total = total.clone()
        for j0, j1 in blocks:
            s, not_self, same, _ = _exact_logits(
                q[chunk],
                k[j0:j1],
                q_labels[chunk],
                k_labels[j0:j1],
                q_ids[chunk],
                key_ids[j0:j1],
                q_aux[chunk],
                k_aux[j0:j1],
                temperature,
                euclidean,
            )
            total = torch.logaddexp(total, torch.logsumexp(s.masked_fill(~not_self, -math.inf), dim=1))
            same_total = torch.logaddexp(same_total, torch.logsumexp(s.masked_fill(~same, -math.inf), dim=1))
        lse_all[chunk] = total
        lse_same[chunk] = same_total


def exact_backward(
    far_all,
    far_same,
    q,
    k,
    q_labels,
    k_labels,
    q_ids,
    q_aux,
    k_aux,
    temperature,
    euclidean,
    lse_all,
    lse_same,
    g_all,
    g_same,
    raw_q,
    hsum_q,
    raw_k,
    hsum_k,
):
    """Add the far rows' gradient terms (those ``shared_coefficients`` left out)
    to the accumulators sum_j H_ij c_j and sum_j H_ij of queries and keys;
    returns their share of sum H * s (the temperature's gradient)."""
    index = torch.nonzero(far_same).flatten()
    if not index.numel():
        return 0.0
    key_ids = torch.arange(k.shape[0], device=k.device)
    weighted = 0.0
    for chunk, blocks in _chunks(index, k.shape[0]):
        finite_same = torch.where(lse_same[chunk].isfinite(), lse_same[chunk], 0.0)
        for j0, j1 in blocks:
            s, not_self, same, unclamped = _exact_logits(
                q[chunk],
                k[j0:j1],
                q_labels[chunk],
                k_labels[j0:j1],
                q_ids[chunk],
                key_ids[j0:j1],
                q_aux[chunk],
                k_aux[j0:j1],
                temperature,
                euclidean,
            )
            p_all = torch.exp(s - lse_all[chunk, None]).masked_fill(~not_self, 0.0)
            p_same = torch.exp(s - finite_same[:, None]).masked_fill(~same, 0.0)
            h = torch.where(far_all[chunk, None], g_all[chunk, None] * p_all, 0.0) + g_same[chunk, None] * p_same
            weighted = weighted + (h * s.masked_fill(~not_self, 0.0)).sum()
            if euclidean:
                h = h * unclamped
                hsum_q[chunk] += h.sum(1)
                hsum_k[j0:j1] += h.sum(0)
            raw_q[chunk] += (h @ k[j0:j1]).to(raw_q.dtype)
            raw_k[j0:j1] += (h.T @ q[chunk]).to(raw_k.dtype)
    return weighted
