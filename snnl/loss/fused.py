"""Autograd glue for the fused Triton kernels (``backend="triton"``).

The kernels: ``snnl.kernels.soft_nearest_neighbor`` (the pair kernels:
partial sums per part of the key range forward, partial gradient rows
backward) and ``snnl.kernels.rows`` (everything O(b * d) around them:
operands, the parts added in a fixed order, the exact pass for far rows, the
gradient of the points).  A call is, on the GPU, with no host
synchronisation:

    forward:  prepare (per input), forward, finish_forward
    backward: coefficients, then per input (one, or two for queries vs
              keys): backward, its far pass (no trips without far
              rows), finish_backward; and one sum for a learned T.

The per-row algebra is ``rowwise`` / ``shared_exp``'s, as on the CPU path.
"""

from __future__ import annotations


import torch

from .compiled import Compiled
from .shared_exp import FAR, shared_coefficients

LOG2E = 1.4426950408889634


def backward_coefficients(lse_all, lse_same, eps: float, grad_rows, far: float):
    """The backward kernels' per-row inputs: a = g_all / S and c = g_same / N
    for the shared-exp terms (``shared_coefficients``), the far rows' exact
    coefficients (4, n) = (e_all, e_same, lse_all log2(e), lse_same log2(e))
    (zeros for rows the shared terms cover: see ``_backward_kernel``), and a
    (1,) int32 flag: whether any row is far."""
    coef, same_coef, g_all, g_same, far_all, far_same = shared_coefficients(lse_all, lse_same, eps, grad_rows, far)
    exact_same = far_same & torch.isfinite(lse_same)
    zero = torch.zeros_like(lse_all)
    exact = torch.stack([torch.where(far_all, g_all, zero), torch.where(exact_same, g_same, zero),
                         torch.where(far_all, lse_all, zero) * LOG2E, torch.where(exact_same, lse_same, zero) * LOG2E])
    return coef, same_coef, exact, far_same.any().to(torch.int32).reshape(1)


# The backward's per-row algebra, fused (one or two kernels on the GPU instead
# of a few dozen small ones; eager under SNNL_COMPILE=0 and in the tests).
_backward_coefficients = Compiled(backward_coefficients)


def _kernels():
    # Imported on first use so that importing snnl never imports Triton, and so
    # that TRITON_INTERPRET (for CPU tensors) can be set by the caller before the first call.
    from ..kernels import rows, soft_nearest_neighbor

    return soft_nearest_neighbor, rows


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _run(kind, launch_for, n, dim, dtype, precision, euclidean, config, device):
    """Launch with the given configuration, or the tuned one for this shape."""
    kernels, _ = _kernels()
    if config is None:
        config = kernels.tuned_config(kind, n, dim, dtype, precision, euclidean, lambda c: launch_for(c)[0], device)
    launch, outputs = launch_for(config)
    launch.run()
    return outputs


class FusedSoftNearestNeighbor(torch.autograd.Function):
    """Per-query loss of points against keys with the fused kernels (the raw
    points: the kernels normalise them for the cosine distance).

    ``square``: the queries are the keys (same tensor, offset 0); the backward
    pass is then one launch whose every pair carries both its rows' terms, and
    the whole gradient is returned through ``queries``.
    """

    @staticmethod
    def forward(ctx, queries, keys, query_labels, key_labels, temperature, offset: int, cosine: bool, eps: float,
                config, square: bool, precision: str):
        kernels, rows = _kernels()
        keys = queries if square else keys
        query_labels = query_labels.contiguous()
        key_labels = query_labels if square else key_labels.contiguous()
        # (hi, lo) for 3xTF32, padded for the feature chunks, and the squared
        # norms: made once and kept for backward
        block_d = config.block_d if config is not None else None
        q_hi, q_lo, q_aux = rows.prepare(queries, precision, block_d, cosine)
        k_hi, k_lo, k_aux = (q_hi, q_lo, q_aux) if square else rows.prepare(keys, precision, block_d, cosine)
        q_ops, k_ops = (q_hi, q_lo), (k_hi, k_lo)
        q_sq, k_sq = (None, None) if cosine else (q_aux, k_aux)  # the Euclidean distance's |x|^2
        sums = _run("forward", lambda c: kernels.forward_launch(q_ops, k_ops, query_labels, key_labels, q_sq, k_sq,
                                                                temperature, offset, config=c, precision=precision),
                    max(queries.shape[0], keys.shape[0]), queries.shape[1], queries.dtype, precision, not cosine,
                    config, queries.device)
        finish, (lse, loss) = rows.finish_forward_launch(q_ops, k_ops, query_labels, key_labels, q_sq, k_sq,
                                                         temperature, offset, sums, FAR[_acc(queries)], eps,
                                                         precision=precision)
        finish.run()
        lse_all, lse_same = lse[0], lse[1]
        ctx.save_for_backward(queries, keys, q_hi, q_lo, k_hi, k_lo, q_aux, k_aux, query_labels, key_labels,
                              temperature, lse_all, lse_same)
        ctx.offset, ctx.cosine, ctx.eps, ctx.config, ctx.square, ctx.precision = (offset, cosine, eps, config, square,
                                                                                   precision)
        return loss

    @staticmethod
    def backward(ctx, grad_rows):
        kernels, rows = _kernels()
        (queries, keys, q_hi, q_lo, k_hi, k_lo, q_aux, k_aux, query_labels, key_labels, temperature, lse_all,
         lse_same) = ctx.saved_tensors
        q_ops, k_ops = (q_hi, q_lo), (k_hi, k_lo)
        cosine, offset, precision, config = ctx.cosine, ctx.offset, ctx.precision, ctx.config
        q_sq, k_sq = (None, None) if cosine else (q_aux, k_aux)
        coef, same_coef, exact, any_far = _backward_coefficients(lse_all, lse_same, ctx.eps,
                                                                 grad_rows.to(lse_all.dtype), FAR[_acc(queries)])
        coefs = (coef.contiguous(), same_coef.contiguous(), exact.contiguous())
        need_weighted = ctx.needs_input_grad[4]
        n, dim = queries.shape

        def backward_pass(points, aux, rows_ops, cols_ops, row_labels, col_labels, row_sq, col_sq, row_coefs,
                          col_coefs, delta, weighted):
            def launch_for(c, far_pass=False):
                return kernels.backward_launch(rows_ops, cols_ops, row_labels, col_labels, row_sq, col_sq, temperature,
                                               row_coefs, col_coefs, delta, weighted, config=c, precision=precision,
                                               any_far=any_far, far_pass=far_pass)

            n_max = max(rows_ops[0].shape[0], cols_ops[0].shape[0])
            parts = _run("backward", launch_for, n_max, dim, rows_ops[0].dtype, precision, not cosine, config,
                         rows_ops[0].device)
            # the far rows' exact terms: no trips unless some row is far
            far, far_parts = launch_for(config or kernels.far_pass_config(dim, rows_ops[0].dtype), far_pass=True)
            far.run()
            finish, (grad, t_share) = rows.finish_backward_launch(parts, far_parts, points, aux, temperature, cosine)
            finish.run()
            return grad, t_share

        if ctx.square:
            grad_queries, t_share = backward_pass(queries, q_aux, q_ops, q_ops, query_labels, query_labels, q_sq, q_sq,
                                                  coefs, coefs, 0, need_weighted)
            grad_keys = None
        else:
            grad_queries, t_share = backward_pass(queries, q_aux, q_ops, k_ops, query_labels, key_labels, q_sq, k_sq,
                                                  coefs, None, offset, need_weighted)
            # the keys' gradient from the queries' terms: key j is query j - offset
            grad_keys, _ = backward_pass(keys, k_aux, k_ops, q_ops, key_labels, query_labels, k_sq, q_sq, None, coefs,
                                         -offset, False)
        grad_t = t_share.sum() if need_weighted else None  # the rows' shares of dl/dT
        return grad_queries, grad_keys, None, None, grad_t, None, None, None, None, None, None


def fused_rows(x, labels, temperature, cosine: bool, eps: float, config=None, *, keys=None, key_labels=None,
               offset: int = 0, precision: str = "tf32x3"):
    """Per-row losses of the raw points ``x`` against ``keys`` (default: ``x``
    itself; both normalised inside for the cosine distance).
    ``config``: a ``TileConfig`` to use instead of the tuned one (tests)."""
    square = keys is None
    return FusedSoftNearestNeighbor.apply(
        x, x if square else keys, labels, labels if square else key_labels, temperature, offset, cosine, eps,
        config, square, precision,
    )
