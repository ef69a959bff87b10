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


def _squared_norms(x, dtype, cosine):
    return None if cosine else x.to(dtype).pow(2).sum(dim=1)


def _points_gradient(raw, h_sum, x, temperature, cosine):
    """From sum_j H_ij c_j (and sum_j H_ij) to the gradient of the points."""
    if cosine:  # s_ij = (<x_i, c_j> - 1) / T
        return (raw / temperature).to(x.dtype)
    # s_ij = -|x_i - c_j|^2 / T
    return (-2.0 * (h_sum[:, None] * x.to(raw.dtype) - raw) / temperature).to(x.dtype)


class FusedSoftNearestNeighbor(torch.autograd.Function):
    """Per-query loss of prepared points against keys with the fused kernels.

    ``square``: the queries are the keys (same tensor, offset 0); the backward
    then needs a single pass and returns the whole gradient through ``queries``.
    """

    @staticmethod
    def forward(ctx, queries, keys, query_labels, key_labels, temperature, offset: int, cosine: bool, eps: float,
                blocks, square: bool):
        kernels = _kernels()
        queries = queries.contiguous()
        keys = queries if square else keys.contiguous()
        query_labels = query_labels.to(torch.int64).contiguous()
        key_labels = query_labels if square else key_labels.to(torch.int64).contiguous()
        query_sq = _squared_norms(queries, temperature.dtype, cosine)
        key_sq = query_sq if square else _squared_norms(keys, temperature.dtype, cosine)
        lse_all, lse_same = kernels.forward(queries, keys, query_labels, key_labels, query_sq, key_sq,
                                            temperature, offset, blocks=blocks)
        ctx.save_for_backward(queries, keys, query_labels, key_labels, temperature, lse_all, lse_same)
        ctx.offset, ctx.cosine, ctx.eps, ctx.blocks, ctx.square = offset, cosine, eps, blocks, square
        return rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        kernels = _kernels()
        queries, keys, query_labels, key_labels, temperature, lse_all, lse_same = ctx.saved_tensors
        cosine, offset = ctx.cosine, ctx.offset
        g_all, g_same = row_coefficients(lse_all, lse_same, ctx.eps, grad_rows.to(lse_all.dtype))
        safe_same = torch.where(torch.isfinite(lse_same), lse_same, torch.zeros_like(lse_same))
        stats = (lse_all, safe_same, g_all.contiguous(), g_same.contiguous())
        query_sq = _squared_norms(queries, temperature.dtype, cosine)
        if ctx.square:
            raw, h_sum, weighted = kernels.backward_pass(
                queries, queries, query_labels, query_labels, query_sq, query_sq, temperature,
                stats, stats, 0, 0, blocks=ctx.blocks,
            )
            grad_queries, grad_keys = _points_gradient(raw, h_sum, queries, temperature, cosine), None
        else:
            key_sq = _squared_norms(keys, temperature.dtype, cosine)
            raw, h_sum, weighted = kernels.backward_pass(
                queries, keys, query_labels, key_labels, query_sq, key_sq, temperature,
                stats, None, offset, 0, blocks=ctx.blocks,
            )
            grad_queries = _points_gradient(raw, h_sum, queries, temperature, cosine)
            raw_k, h_sum_k, _ = kernels.backward_pass(
                keys, queries, key_labels, query_labels, key_sq, query_sq, temperature,
                None, stats, 0, offset, blocks=ctx.blocks,
            )
            grad_keys = _points_gradient(raw_k, h_sum_k, keys, temperature, cosine)
        # s = -d / T  =>  ds/dT = -s / T
        grad_t = -weighted.sum() / temperature if ctx.needs_input_grad[4] else None
        return grad_queries, grad_keys, None, None, grad_t, None, None, None, None, None


def fused_rows(x, labels, temperature, cosine: bool, eps: float, blocks=None, *, keys=None, key_labels=None,
               offset: int = 0):
    """Per-row losses of ``x`` against ``keys`` (default: ``x`` itself)."""
    square = keys is None
    return FusedSoftNearestNeighbor.apply(
        x, x if square else keys, labels, labels if square else key_labels, temperature, offset, cosine, eps,
        blocks, square,
    )
