"""Autograd glue for the fused Triton kernels (``backend="triton"``).

The kernels live in ``snnl.kernels.soft_nearest_neighbor``: partial sums per
part of the key range (forward) and partial gradient rows (backward), which
this module adds up in a fixed order.  Everything around them is O(b * d)
torch: the per-row log-sum-exps and coefficients, and the exact pass for far
rows (``shared_exp``), the same algebra as the CPU path.
"""

from __future__ import annotations

import torch

from .compiled import Compiled
from .rowwise import rows_loss
from .shared_exp import FAR, exact_backward, exact_forward, far_rows, log_sums, shared_coefficients

# The per-row algebra around the kernels, fused (a few kernels on the GPU
# instead of dozens of small ones; eager under SNNL_COMPILE=0 and in the tests).
_log_sums = Compiled(log_sums)
_shared_coefficients = Compiled(shared_coefficients)
_rows_loss = Compiled(rows_loss)


def _kernels():
    # Imported on first use so that importing snnl never imports Triton, and so
    # that TRITON_INTERPRET (for CPU tensors) can be set by the caller before the first call.
    from ..kernels import soft_nearest_neighbor

    return soft_nearest_neighbor


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _squared_norms(x, cosine):
    return None if cosine else x.to(_acc(x)).pow(2).sum(dim=1)


def _aux(sq, x):
    """The squared norms the exact pass takes (zeros for the cosine distance, which has none)."""
    return sq if sq is not None else x.new_zeros(x.shape[0], dtype=_acc(x))


def _codes(query_labels, key_labels, square: bool):
    """Labels as dense int32 codes (the kernels compare int32) and, per query,
    the number of same-class keys besides itself."""
    labels = query_labels if square else torch.cat([query_labels, key_labels])
    classes, codes = torch.unique(labels, return_inverse=True)
    codes = codes.to(torch.int32)
    q_codes, k_codes = (codes, codes) if square else (codes[: len(query_labels)], codes[len(query_labels):])
    same_count = torch.bincount(k_codes, minlength=len(classes))[q_codes] - 1
    return q_codes.contiguous(), k_codes.contiguous(), same_count


def _points_gradient(raw, h_sum, x, temperature, cosine):
    """From sum_j H_ij c_j (and sum_j H_ij) to the gradient of the prepared points."""
    if cosine:  # s_ij = (<x_i, c_j> - 1) / T
        return (raw / temperature).to(x.dtype)
    return (-2.0 * (h_sum[:, None] * x.to(raw.dtype) - raw) / temperature).to(x.dtype)  # s_ij = -|x_i - c_j|^2 / T


def _add_parts(parts: torch.Tensor) -> torch.Tensor:
    """The sum over the first axis (the parts of the key range), part after
    part: a fixed order, and the same operations for every element (a
    vectorised reduction may round equal inputs differently at different
    positions, which would break exact ties such as N_i = S_i)."""
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total


def _run(kind, launch_for, n, dim, dtype, precision, euclidean, config, device):
    """Launch with the given configuration, or the tuned one for this shape."""
    kernels = _kernels()
    if config is None:
        config = kernels.tuned_config(kind, n, dim, dtype, precision, euclidean, lambda c: launch_for(c)[0], device)
    launch, outputs = launch_for(config)
    launch.run()
    return outputs


class FusedSoftNearestNeighbor(torch.autograd.Function):
    """Per-query loss of prepared points against keys with the fused kernels.

    ``square``: the queries are the keys (same tensor, offset 0); the backward
    pass is then one launch whose every pair carries both its rows' terms, and
    the whole gradient is returned through ``queries``.
    """

    @staticmethod
    def forward(ctx, queries, keys, query_labels, key_labels, temperature, offset: int, cosine: bool, eps: float,
                config, square: bool, precision: str):
        kernels = _kernels()
        queries = queries.contiguous()
        keys = queries if square else keys.contiguous()
        q_codes, k_codes, same_count = _codes(query_labels, key_labels, square)
        q_sq = _squared_norms(queries, cosine)
        k_sq = q_sq if square else _squared_norms(keys, cosine)
        # (hi, lo) for 3xTF32, padded for the feature chunks, made once and kept for backward
        block_d = config.block_d if config is not None else None
        q_ops = kernels.operands(queries, precision, block_d)
        k_ops = q_ops if square else kernels.operands(keys, precision, block_d)
        sums = _run("forward", lambda c: kernels.forward_launch(q_ops, k_ops, q_codes, k_codes, q_sq, k_sq,
                                                                temperature, offset, config=c, precision=precision),
                    max(queries.shape[0], keys.shape[0]), queries.shape[1], queries.dtype, precision, not cosine,
                    config, queries.device)
        total = _add_parts(sums)
        far = FAR[_acc(queries)]
        lse_all, lse_same = _log_sums(total[0], total[1], same_count, far)
        q_ids = torch.arange(offset, offset + queries.shape[0], device=queries.device)
        exact_forward(far_rows(lse_all, lse_same, far), queries.to(_acc(queries)), keys.to(_acc(keys)),
                      query_labels, key_labels, q_ids, _aux(q_sq, queries), _aux(k_sq, keys), temperature,
                      not cosine, lse_all, lse_same)
        ctx.save_for_backward(queries, keys, *q_ops, *k_ops, query_labels, key_labels, q_codes, k_codes,
                              temperature, lse_all, lse_same)
        ctx.offset, ctx.cosine, ctx.eps, ctx.config, ctx.square, ctx.precision = (offset, cosine, eps, config, square,
                                                                                   precision)
        return _rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        kernels = _kernels()
        (queries, keys, q_hi, q_lo, k_hi, k_lo, query_labels, key_labels, q_codes, k_codes, temperature, lse_all,
         lse_same) = ctx.saved_tensors
        q_ops, k_ops = (q_hi, q_lo), (k_hi, k_lo)
        cosine, offset, precision, config = ctx.cosine, ctx.offset, ctx.precision, ctx.config
        far = FAR[_acc(queries)]
        coef, same_coef, g_all, g_same, far_all, far_same = _shared_coefficients(
            lse_all, lse_same, ctx.eps, grad_rows.to(lse_all.dtype), far)
        coefs = (coef.contiguous(), same_coef.contiguous())
        q_sq = _squared_norms(queries, cosine)
        need_weighted = ctx.needs_input_grad[4]
        n, dim = queries.shape

        def backward_pass(rows, cols, row_codes, col_codes, row_sq, col_sq, row_coefs, col_coefs, delta, weighted):
            grad, h_sum, weighted_rows = _run(
                "backward", lambda c: kernels.backward_launch(rows, cols, row_codes, col_codes, row_sq, col_sq,
                                                              temperature, row_coefs, col_coefs, delta, weighted,
                                                              config=c, precision=precision),
                max(rows[0].shape[0], cols[0].shape[0]), dim, rows[0].dtype, precision, not cosine, config,
                rows[0].device)
            return _add_parts(grad)[:, :dim], _add_parts(h_sum), _add_parts(weighted_rows)  # drop the padding

        if ctx.square:
            raw_q, hsum_q, weighted = backward_pass(q_ops, q_ops, q_codes, q_codes, q_sq, q_sq, coefs, coefs, 0,
                                                    need_weighted)
            raw_k, hsum_k, k_sq = raw_q, hsum_q, q_sq
        else:
            k_sq = _squared_norms(keys, cosine)
            raw_q, hsum_q, weighted = backward_pass(q_ops, k_ops, q_codes, k_codes, q_sq, k_sq, coefs, None, offset,
                                                    need_weighted)
            # the keys' gradient from the queries' terms: key j is query j - offset
            raw_k, hsum_k, _ = backward_pass(k_ops, q_ops, k_codes, q_codes, k_sq, q_sq, None, coefs, -offset, False)
        weighted = weighted.sum() * 0.6931471805599453  # the kernels sum own * s * log2(e)
        q_ids = torch.arange(offset, offset + n, device=queries.device)
        weighted = weighted + exact_backward(far_all, far_same, queries.to(_acc(queries)), keys.to(_acc(keys)),
                                             query_labels, key_labels, q_ids, _aux(q_sq, queries), _aux(k_sq, keys),
                                             temperature, not cosine, lse_all, lse_same, g_all, g_same,
                                             raw_q, hsum_q, raw_k, hsum_k)
        grad_queries = _points_gradient(raw_q, hsum_q, queries, temperature, cosine)
        grad_keys = None if ctx.square else _points_gradient(raw_k, hsum_k, keys, temperature, cosine)
        grad_t = -weighted / temperature if need_weighted else None  # s = -d / T  =>  ds/dT = -s / T
        return grad_queries, grad_keys, None, None, grad_t, None, None, None, None, None, None


def fused_rows(x, labels, temperature, cosine: bool, eps: float, config=None, *, keys=None, key_labels=None,
               offset: int = 0, precision: str = "tf32x3"):
    """Per-row losses of ``x`` against ``keys`` (default: ``x`` itself).
    ``config``: a ``TileConfig`` to use instead of the tuned one (tests)."""
    square = keys is None
    return FusedSoftNearestNeighbor.apply(
        x, x if square else keys, labels, labels if square else key_labels, temperature, offset, cosine, eps,
        config, square, precision,
    )
