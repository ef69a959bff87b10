"""The CPU path: tiles of pairs computed once, a few large torch operations each.

The batch is cut into blocks of rows.  In the square case (the batch against
itself) the logits are symmetric, s_ij = s_ji, so each unordered pair of
blocks is one tile that serves its rows and its columns: half the products
and exponentials of rows against the whole batch.  Memory is a few tiles,
O(block^2), whatever the batch size.

A tile costs a handful of large operations and no elementwise pass of its
own around them:

- the logits come out of one matrix product of augmented operands,
  s = L_I @ R_J^T with L = [x / T, -1 / T] and R = [x, 1] for the cosine
  distance (s = (<x_i, x_j> - 1) / T), L = [2x / T, -|x|^2 / T, -1 / T] and
  R = [x, 1, |x|^2] for the squared Euclidean one;
- one exponential per pair, in place, at the shared shift 0 (``far``);
- with few classes, the sums per row come from thin products with one-hot
  label matrices (W @ Y: each row's mass per class; Y^T @ W for the columns),
  so labels are never compared pair by pair;
- backward: the pair's derivative is H_ij = w_ij M_ij with
  M_ij = a_i + a_j + [y_i = y_j] (c_i + c_j) (rows' and columns' terms) a thin
  product U_I @ V_J^T, and the gradient, the sums of H and the temperature's
  share all come from one product H @ R_J.

Tiles are computed by single-threaded workers and added in a fixed order
(``workers``): fast on a quiet machine, and still fast on a busy one, where
torch's own threads wait at every operation's barrier for a descheduled
thread.  Nothing is compiled: the first call costs what the others do.
"""

from __future__ import annotations

import math

import torch

from ...options import Inputs, LossOptions, Upstream
from ...rowwise import FAR, log_sum_gradients, rows_loss
from . import lean, lean_rows
from .far import exact_backward, exact_forward, far_rows, log_sums, shared_coefficients
from .points import Points, sides
from .tiles import floor_of, gradient_sums, row_max, sums, tile_count
from .workers import caller_single_threaded

# the registry's description of this backend (snnl.loss.registry)
SUMMARY = (
    "the CPU path: tiles of pairs computed once for both directions, a few large torch "
    "operations each, shared out to single-threaded workers; nothing compiled"
)
MEMORY = "O(block^2)"
OPERATOR = True  # torch.library operators (snnl.loss.ops)
CASTS_INPUTS = True  # computes in fp32 (fp64 for fp64 input)


def eager_statistics(inputs: Inputs, options: LossOptions):
    """(lse_all, lse_same, has_same) in plain torch for a call that fits one
    tile in eager code (``lean``), else None: the operator takes it."""
    return lean.statistics(inputs, options) if lean.fits(inputs) else None


def eager_rows(inputs: Inputs, options: LossOptions):
    """(rows, has_same) with a hand-written backward pass for a square call
    that fits one tile in eager code (``lean_rows``), else None."""
    return lean_rows.rows(inputs, options) if lean_rows.fits(inputs) else None


def eager_form(form: str, inputs: Inputs, options: LossOptions):
    """(per-query rows, positives per query) of a contrastive form
    (``snnl.loss.forms``) in plain torch for a call that fits one tile in
    eager code, else None: ``"supcon"``'s L_out from one matrix of logits,
    with a hand-written backward pass in the square case (``lean_rows``)."""
    if form != "supcon":
        return None
    served = lean_rows.supcon_rows(inputs, options) if lean_rows.fits(inputs) else None
    if served is None and lean.fits(inputs):
        served = lean.supcon_rows(inputs, options)
    return served


def saved_like(inputs: Inputs, options: LossOptions) -> list:
    """``forward`` keeps nothing for the backward pass but its inputs and the
    log-sum-exps: the backward pass recomputes each tile."""
    return []


def forward(inputs: Inputs, options: LossOptions):
    """(rows, lse_all, lse_same, []) of the queries against the keys (the
    queries themselves in the square case).  Inputs in the compute dtype;
    ``options.precision`` is the fused kernels' (products here are full fp32
    or fp64)."""
    queries, keys = inputs.queries, inputs.keys
    with caller_single_threaded(queries, tile_count(queries, keys)) as workers:
        square = inputs.square
        q, k, same_count = sides(inputs, options)
        far, floor = FAR[q.x.dtype], floor_of(q, k)
        lse_all, lse_same = log_sums(*sums(q, k, square, workers, floor), same_count, far)
        index = far_rows(lse_all, lse_same, far)
        if index.numel():
            # the far rows again at their own scale, their largest logit: every
            # sum over all keys is at least 1 then
            rows = q.take(index)
            scale = row_max(rows, k, workers)
            finite = scale > -math.inf  # else every logit of the row overflowed (below)
            scale = torch.where(finite, scale, 0.0)
            sum_all, sum_same = sums(rows, k, False, workers, floor, shift=scale)
            kept = sum_same > math.exp(-far)  # a same-class sum that lost no precision
            lse_all[index] = torch.where(finite, scale + torch.log(sum_all), -math.inf)
            lse_same[index] = torch.where(kept & finite, scale + torch.log(sum_same), -math.inf)
            # same-class sums far below the total: exactly, with their own running maximum
            exact_forward(index[finite & ~kept & (same_count[index] > 0)], q, k, lse_all, lse_same)
        _poison_overflow(lse_all, lse_same, same_count, k.x.shape[0] - int(square or options.self_offset >= 0))
        return rows_loss(lse_all, lse_same, options.eps), lse_all, lse_same, []


def _poison_overflow(lse_all, lse_same, same_count, other_keys: int) -> None:
    """NaN, in place, for a log-sum-exp that is -inf although the row has keys
    (of its class): every such logit overflowed (finite points, a distance /
    T beyond the dtype's range), and -inf would read as "no neighbour", a
    quiet wrong answer (``reference.statistics`` does the same)."""
    lse_all.masked_fill_((lse_all == -math.inf) & (other_keys > 0), math.nan)
    lse_same.masked_fill_((lse_same == -math.inf) & (same_count > 0), math.nan)


def backward(
    upstream: Upstream, lse_all, lse_same, saved, inputs: Inputs, options: LossOptions, temperature_grad: bool
):
    """(grad_queries, grad_keys or None, grad_temperature or None)."""
    queries, keys = inputs.queries, inputs.keys
    with caller_single_threaded(queries, tile_count(queries, keys)) as workers:
        square = inputs.square
        q, k, _ = sides(inputs, options)
        far, floor = FAR[q.x.dtype], floor_of(q, k)
        g_all, g_same = log_sum_gradients(upstream, lse_all, lse_same, options.eps)
        coef, same_coef, far_all, far_same = shared_coefficients(lse_all, lse_same, g_all, g_same, far)
        total = gradient_sums(q, k, coef, same_coef, square, temperature_grad, workers, floor)
        index = torch.nonzero(far_same).flatten()  # the rows whose terms the shared scale left out
        exact = torch.zeros_like(far_same)
        if index.numel():
            # their terms at their own scale lse_all: H = exp(s - lse_all) (a + [same] c) with
            # a = g_all (far_all rows), c = g_same exp(lse_all - lse_same); where that factor
            # would overflow, exactly
            has_same = torch.isfinite(lse_same[index])
            gap = torch.where(has_same, lse_all[index] - lse_same[index], 0.0)
            shifted = gap <= far / 2
            rows, gap = index[shifted], gap[shifted]
            a = torch.where(far_all[rows], g_all[rows], 0.0)
            c = torch.where(has_same[shifted], g_same[rows] * torch.exp(gap), 0.0)
            total.add(
                gradient_sums(q.take(rows), k, a, c, False, temperature_grad, workers, floor, shift=lse_all[rows]),
                rows,
            )
            exact[index[~shifted]] = True
        exact_backward(far_all & exact, far_same & exact, q, k, lse_all, lse_same, g_all, g_same, total)
        temperature = inputs.temperature
        grad_q = _points_gradient(total.raw_q, total.hsum_q, q)
        grad_k = None if square else _points_gradient(total.raw_k, total.hsum_k, k)
        grad_t = -total.share / temperature if temperature_grad else None  # s = -d / T: ds/dT = -s / T
        return grad_q, grad_k, grad_t


def _points_gradient(raw, hsum, points: Points):
    """From sum_j H_ij x_j (and sum_j H_ij) to the gradient of the raw points,
    in place of ``raw``."""
    if points.euclidean:  # s_ij = -|x_i - x_j|^2 / T (centred points): -2 (hsum_i x_i - raw_i) / T
        return raw.addcmul_(points.x, hsum[:, None], value=-1.0).mul_(2.0 * points.scale)
    # s_ij = (<x_i, x_j> - 1) / T with x = z / |z|: the Jacobian (I - x x^T) / |z|,
    # |z| = largest * aux; 0 for a row of zeros (``reference.unit_rows``)
    assert points.largest is not None, "cosine points keep their rows' largest entries"
    g = raw.mul_(points.scale)
    radial = (points.x[:, None, :] @ g[:, :, None]).view(-1)  # <x_i, g_i>, no (n, d) temporary
    g.addcmul_(points.x, radial[:, None], value=-1.0)
    nonzero = points.largest != 0
    g.div_(torch.where(nonzero, points.aux, 1.0)[:, None]).div_(torch.where(nonzero, points.largest, 1.0)[:, None])
    return g.masked_fill_(~nonzero[:, None], 0.0)
