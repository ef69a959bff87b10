"""Autograd glue for the fused Triton kernels (``backend="triton"``).

The kernels live in ``snnl.kernels.soft_nearest_neighbor``; this module turns
their per-row outputs into the loss and the gradients with O(b * d) torch ops.
"""

from __future__ import annotations

import torch

from .rowwise import row_coefficients, rows_loss


def _kernels():
    # Imported on first use so that importing snnl never imports Triton, and so
    # that TRITON_INTERPRET, read when the kernels are decorated, can still be set
    # by the caller before the first call.
    from ..kernels import soft_nearest_neighbor

    return soft_nearest_neighbor


class FusedSoftNearestNeighbor(torch.autograd.Function):
    """Per-row loss of prepared points ``x`` (b x d) with the fused kernels."""

    @staticmethod
    def forward(ctx, x, labels, temperature, cosine: bool, eps: float, blocks):
        kernels = _kernels()
        x = x.contiguous()
        labels = labels.to(torch.int64).contiguous()
        squared_norms = None if cosine else x.to(temperature.dtype).pow(2).sum(dim=1)
        lse_all, lse_same = kernels.forward(x, labels, squared_norms, temperature, blocks=blocks)
        ctx.save_for_backward(x, labels, temperature, lse_all, lse_same)
        ctx.cosine, ctx.eps, ctx.blocks = cosine, eps, blocks
        return rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        kernels = _kernels()
        x, labels, temperature, lse_all, lse_same = ctx.saved_tensors
        g_all, g_same = row_coefficients(lse_all, lse_same, ctx.eps, grad_rows.to(lse_all.dtype))
        safe_same = torch.where(torch.isfinite(lse_same), lse_same, torch.zeros_like(lse_same))
        squared_norms = None if ctx.cosine else x.to(temperature.dtype).pow(2).sum(dim=1)
        h_x, h_sum, weighted = kernels.backward(
            x, labels, squared_norms, temperature, lse_all, safe_same,
            g_all.contiguous(), g_same.contiguous(), blocks=ctx.blocks,
        )
        if ctx.cosine:  # s_ij = (<x_i, x_j> - 1) / T
            grad_x = h_x / temperature
        else:  # s_ij = -|x_i - x_j|^2 / T
            grad_x = -2.0 * (h_sum[:, None] * x.to(h_x.dtype) - h_x) / temperature
        grad_t = -weighted.sum() / temperature if ctx.needs_input_grad[2] else None
        return grad_x.to(x.dtype), None, grad_t, None, None, None


def fused_rows(x, labels, temperature, cosine: bool, eps: float, blocks=None):
    return FusedSoftNearestNeighbor.apply(x, labels, temperature, cosine, eps, blocks)
