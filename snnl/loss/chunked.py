"""Pure-PyTorch path with O(b * block) memory: row blocks against the whole batch.

The forward pass keeps two numbers per row (the log-sum-exps over all pairs
and over same-class pairs); the backward pass recomputes each block of logits
from them instead of storing the b x b matrices.  This is the fast path on
CPUs and on GPUs without Triton.

The points ``x`` are already prepared by the caller: unit rows for the cosine
distance (normalisation is an ordinary autograd op upstream), raw rows for the
squared Euclidean distance.
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


def _block_logits(x, squared_norms, start, stop, temperature, cosine):
    """Logits of rows start:stop against all rows, self pairs not yet masked.

    Returns the logits and, for the Euclidean distance, the mask of pairs whose
    distance was not clamped at zero (the clamp passes no gradient there).
    """
    dots = x[start:stop] @ x.T
    if cosine:
        return -(1.0 - dots) / temperature, None
    raw = squared_norms[start:stop, None] + squared_norms[None, :] - 2.0 * dots
    return -raw.clamp_min(0.0) / temperature, raw >= 0


def _block_masks(labels, start, stop):
    rows = torch.arange(start, stop, device=labels.device)
    not_self = torch.ones(stop - start, labels.shape[0], dtype=torch.bool, device=labels.device)
    not_self[torch.arange(stop - start, device=labels.device), rows] = False
    same = (labels[start:stop, None] == labels[None, :]) & not_self
    return not_self, same


class ChunkedSoftNearestNeighbor(torch.autograd.Function):
    """Per-row loss of prepared points ``x`` (b x d), O(b * block) memory."""

    @staticmethod
    def forward(ctx, x, labels, temperature, cosine: bool, eps: float, block_rows: int):
        b = x.shape[0]
        squared_norms = None if cosine else (x * x).sum(dim=1)
        lse_all = torch.empty(b, dtype=x.dtype, device=x.device)
        lse_same = torch.empty_like(lse_all)
        for start in range(0, b, block_rows):
            stop = min(b, start + block_rows)
            logits, _ = _block_logits(x, squared_norms, start, stop, temperature, cosine)
            not_self, same = _block_masks(labels, start, stop)
            lse_all[start:stop] = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1)
            lse_same[start:stop] = torch.logsumexp(logits.masked_fill(~same, float("-inf")), dim=1)
        ctx.save_for_backward(x, labels, temperature, lse_all, lse_same)
        ctx.cosine, ctx.eps, ctx.block_rows = cosine, eps, block_rows
        return rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        x, labels, temperature, lse_all, lse_same = ctx.saved_tensors
        cosine, block_rows = ctx.cosine, ctx.block_rows
        b = x.shape[0]
        g_all, g_same = row_coefficients(lse_all, lse_same, ctx.eps, grad_rows)
        # Rows without same-class neighbours have g_same == 0; any finite stand-in
        # for their -inf log-sum-exp keeps exp() from producing inf * 0.
        safe_same = torch.where(torch.isfinite(lse_same), lse_same, torch.zeros_like(lse_same))
        squared_norms = None if cosine else (x * x).sum(dim=1)

        # grad_s[i, j] = d loss / d s_ij.  s is symmetric, so row i's gradient
        # collects both grad_s[i, j] (its own loss) and grad_s[j, i] (row j's loss).
        grad_x = torch.zeros_like(x)
        weighted_logits = x.new_zeros(())
        for start in range(0, b, block_rows):
            stop = min(b, start + block_rows)
            logits, unclamped = _block_logits(x, squared_norms, start, stop, temperature, cosine)
            not_self, same = _block_masks(labels, start, stop)
            p_all = torch.exp(logits - lse_all[start:stop, None]).masked_fill(~not_self, 0.0)
            p_same = torch.exp(logits - safe_same[start:stop, None]).masked_fill(~same, 0.0)
            grad_s = g_all[start:stop, None] * p_all + g_same[start:stop, None] * p_same
            weighted_logits = weighted_logits + (grad_s * logits.masked_fill(~not_self, 0.0)).sum()
            if cosine:  # s_ij = (<x_i, x_j> - 1) / T
                grad_x[start:stop] += grad_s @ x
                grad_x += grad_s.T @ x[start:stop]
            else:  # s_ij = -|x_i - x_j|^2 / T, clamped at distance 0
                grad_s = grad_s * unclamped
                grad_x[start:stop] -= 2.0 * (grad_s.sum(dim=1, keepdim=True) * x[start:stop] - grad_s @ x)
                grad_x -= 2.0 * (grad_s.sum(dim=0)[:, None] * x - grad_s.T @ x[start:stop])
        grad_x = grad_x / temperature
        # s = -d / T  =>  ds/dT = -s / T
        grad_t = -weighted_logits / temperature if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_t, None, None, None


def chunked_rows(x, labels, temperature, cosine: bool, eps: float, block_rows: int | None = None):
    if block_rows is None:
        block_rows = block_rows_for(x.shape[0])
    return ChunkedSoftNearestNeighbor.apply(x, labels, temperature, cosine, eps, block_rows)
