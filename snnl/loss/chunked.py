"""Pure-PyTorch path with O(b * block) memory: row blocks against the whole batch.

The forward pass keeps two numbers per row (the log-sum-exps over all pairs
and over same-class pairs); the backward pass recomputes each block of logits
from them instead of storing the b x b matrices.  This is the fast path on
CPUs and on GPUs without Triton.

The rows compared (queries) are usually the batch itself (the keys); under
torch.distributed a process's rows are compared with the gathered global
batch, query i being key ``offset + i``.  The points are already prepared by
the caller: unit rows for the cosine distance (normalisation is an ordinary
autograd op upstream), raw rows for the squared Euclidean distance.
"""

from __future__ import annotations

import torch

from .rowwise import row_coefficients, rows_loss

# Elements of one (block x b) logits matrix: 4M floats = 16 MiB in fp32.  A few
# such temporaries live at once, so the peak stays far below one b x b matrix
# for large b while blocks stay big enough for efficient matmuls.
BLOCK_ELEMENTS = 1 << 22


def block_rows_for(batch: int, block_elements: int = BLOCK_ELEMENTS) -> int:
    return max(1, min(batch, block_elements // batch))


def _block_logits(queries, keys, query_sq, key_sq, start, stop, temperature, cosine):
    """Logits of queries start:stop against all keys, self pairs not yet masked.

    Returns the logits and, for the Euclidean distance, the mask of pairs whose
    distance was not clamped at zero (the clamp passes no gradient there).
    """
    dots = queries[start:stop] @ keys.T
    if cosine:
        return -(1.0 - dots) / temperature, None
    raw = query_sq[start:stop, None] + key_sq[None, :] - 2.0 * dots
    return -raw.clamp_min(0.0) / temperature, raw >= 0


def _block_masks(query_labels, key_labels, start, stop, offset):
    n = stop - start
    device = key_labels.device
    not_self = torch.ones(n, key_labels.shape[0], dtype=torch.bool, device=device)
    self_columns = torch.arange(start, stop, device=device) + offset
    inside = self_columns < key_labels.shape[0]
    not_self[torch.arange(n, device=device)[inside], self_columns[inside]] = False
    same = (query_labels[start:stop, None] == key_labels[None, :]) & not_self
    return not_self, same


class ChunkedSoftNearestNeighbor(torch.autograd.Function):
    """Per-query loss of prepared points against keys, O(b * block) memory.

    ``square``: the queries are the keys (one tensor); the whole gradient is
    returned through ``queries``.
    """

    @staticmethod
    def forward(ctx, queries, keys, query_labels, key_labels, temperature, offset: int, cosine: bool, eps: float,
                block_rows: int, square: bool):
        query_sq = None if cosine else (queries * queries).sum(dim=1)
        key_sq = query_sq if square or cosine else (keys * keys).sum(dim=1)
        lse_all = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
        lse_same = torch.empty_like(lse_all)
        for start in range(0, queries.shape[0], block_rows):
            stop = min(queries.shape[0], start + block_rows)
            logits, _ = _block_logits(queries, keys, query_sq, key_sq, start, stop, temperature, cosine)
            not_self, same = _block_masks(query_labels, key_labels, start, stop, offset)
            lse_all[start:stop] = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1)
            lse_same[start:stop] = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
        ctx.save_for_backward(queries, keys, query_labels, key_labels, temperature, lse_all, lse_same)
        ctx.offset, ctx.cosine, ctx.eps, ctx.block_rows, ctx.square = offset, cosine, eps, block_rows, square
        return rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        queries, keys, query_labels, key_labels, temperature, lse_all, lse_same = ctx.saved_tensors
        cosine, block_rows = ctx.cosine, ctx.block_rows
        g_all, g_same = row_coefficients(lse_all, lse_same, ctx.eps, grad_rows)
        # Rows without same-class neighbours have g_same == 0; any finite stand-in
        # for their -inf log-sum-exp keeps exp() from producing inf * 0.
        safe_same = torch.where(torch.isfinite(lse_same), lse_same, torch.zeros_like(lse_same))
        query_sq = None if cosine else (queries * queries).sum(dim=1)
        key_sq = query_sq if ctx.square or cosine else (keys * keys).sum(dim=1)

        # grad_s[i, j] = d loss_i / d s_ij; s_ij depends on query i and key j.
        grad_queries = torch.zeros_like(queries)
        grad_keys = torch.zeros_like(keys)
        weighted_logits = queries.new_zeros(())
        for start in range(0, queries.shape[0], block_rows):
            stop = min(queries.shape[0], start + block_rows)
            logits, unclamped = _block_logits(queries, keys, query_sq, key_sq, start, stop, temperature, cosine)
            not_self, same = _block_masks(query_labels, key_labels, start, stop, ctx.offset)
            p_all = torch.exp(logits - lse_all[start:stop, None]).masked_fill(~not_self, 0.0)
            p_same = torch.exp(logits - safe_same[start:stop, None]).masked_fill(~same, 0.0)
            grad_s = g_all[start:stop, None] * p_all + g_same[start:stop, None] * p_same
            weighted_logits = weighted_logits + (grad_s * logits.masked_fill(~not_self, 0.0)).sum()
            q = queries[start:stop]
            if cosine:  # s_ij = (<q_i, k_j> - 1) / T
                grad_queries[start:stop] += grad_s @ keys
                grad_keys += grad_s.T @ q
            else:  # s_ij = -|q_i - k_j|^2 / T, clamped at distance 0
                grad_s = grad_s * unclamped
                grad_queries[start:stop] -= 2.0 * (grad_s.sum(dim=1, keepdim=True) * q - grad_s @ keys)
                grad_keys -= 2.0 * (grad_s.sum(dim=0)[:, None] * keys - grad_s.T @ q)
        grad_queries = grad_queries / temperature
        grad_keys = grad_keys / temperature
        if ctx.square:
            grad_queries, grad_keys = grad_queries + grad_keys, None
        # s = -d / T  =>  ds/dT = -s / T
        grad_t = -weighted_logits / temperature if ctx.needs_input_grad[4] else None
        return grad_queries, grad_keys, None, None, grad_t, None, None, None, None, None


def chunked_rows(x, labels, temperature, cosine: bool, eps: float, block_rows: int | None = None, *,
                 keys=None, key_labels=None, offset: int = 0):
    """Per-row losses of ``x`` against ``keys`` (default: ``x`` itself)."""
    square = keys is None
    keys = x if square else keys
    if block_rows is None:
        block_rows = block_rows_for(keys.shape[0])
    return ChunkedSoftNearestNeighbor.apply(
        x, keys, labels, labels if square else key_labels, temperature, offset, cosine, eps, block_rows, square
    )
