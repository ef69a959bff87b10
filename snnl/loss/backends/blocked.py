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
- one exponential per pair, in place, at the shared shift 0 (``shared_exp``);
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
from dataclasses import dataclass

import torch

from ..rowwise import rows_loss
from ..shared_exp import FAR, exact_backward, exact_forward, far_rows, log_sums, shared_coefficients
from ..workers import run_in_order

# Rows of a block.  512^2 tiles (1 MiB in fp32) keep the products near the
# GEMM's peak and give a 4,096 batch 36 tiles to share out: enough that a
# descheduled worker's last tile is a small part of a pass.
BLOCK_ROWS = 512
# Smaller batches get smaller blocks, down to this, so that they too are
# shared out (below two such blocks a batch is one tile).
MIN_BLOCK_ROWS = 128
# Up to this many classes among the keys, sums per class come from thin
# products with one-hot label matrices (columns padded to a multiple of 16:
# MKL's thin products run 4x faster with 16 columns than with 10); with more,
# labels are compared pair by pair.
ONEHOT_MAX_CLASSES = 32
# F.normalize's floor on the norm (every backend uses it)
NORM_EPS = 1e-12


@dataclass
class _Points:
    """One side of the pairs (queries or keys), prepared for the tiles."""

    x: torch.Tensor  # unit rows (cosine) or the points (Euclidean)
    aux: torch.Tensor  # norms (cosine) or squared norms (Euclidean)
    left: torch.Tensor  # L: s = L_i . R_j
    right: torch.Tensor  # R
    codes: torch.Tensor  # labels as dense int64 codes (shared by queries and keys)
    onehot: torch.Tensor | None  # (n, classes padded to 16), or None with many classes
    ids: torch.Tensor  # the rows' indices among the keys (self pairs), or past their end: none
    first_id: int  # ids[0], known on the host


def _prepare(z, temperature, euclidean: bool):
    if euclidean:
        sq = (z * z).sum(1)
        one = torch.ones_like(sq)
        left = torch.cat([z * (2.0 / temperature), (-sq / temperature)[:, None], (-one / temperature)[:, None]], 1)
        return z, sq, left, torch.cat([z, one[:, None], sq[:, None]], 1)
    norm = torch.linalg.vector_norm(z, dim=1).clamp_min(NORM_EPS)
    x = z / norm[:, None]
    one = torch.ones_like(norm)
    return x, norm, torch.cat([x / temperature, (-one / temperature)[:, None]], 1), torch.cat([x, one[:, None]], 1)


def _sides(queries, keys, query_labels, key_labels, temperature, self_offset: int, euclidean: bool):
    """(queries, keys, same_count): the prepared sides (one object in the
    square case) and the number of same-class keys of each query, itself
    excluded."""
    square = keys is None
    labels = query_labels if square else torch.cat([query_labels, key_labels])
    classes, codes = torch.unique(labels, return_inverse=True)
    n_q = queries.shape[0]
    q_codes, k_codes = (codes, codes) if square else (codes[:n_q], codes[n_q:])
    n_keys = n_q if square else keys.shape[0]
    self_pairs = square or self_offset >= 0
    same_count = torch.bincount(k_codes, minlength=len(classes))[q_codes] - int(self_pairs)
    onehot = None
    if len(classes) <= ONEHOT_MAX_CLASSES:
        onehot = torch.zeros(len(codes), -(-len(classes) // 16) * 16, dtype=queries.dtype, device=queries.device)
        onehot[torch.arange(len(codes), device=codes.device), codes] = 1.0
    start = (0 if square else self_offset) if self_pairs else n_keys  # beyond the keys: no self pair
    q_ids = torch.arange(start, start + n_q, device=queries.device)
    q = _Points(*_prepare(queries, temperature, euclidean), q_codes, None if onehot is None else onehot[:n_q], q_ids,
                start)
    if square:
        return q, q, same_count
    k = _Points(*_prepare(keys, temperature, euclidean), k_codes, None if onehot is None else onehot[n_q:],
                torch.arange(n_keys, device=keys.device), 0)
    return q, k, same_count


def block_bounds(n: int) -> list[tuple[int, int]]:
    """Nearly equal blocks of at most BLOCK_ROWS rows (fewer for small
    batches, down to MIN_BLOCK_ROWS, so that they make several tiles), with no
    sliver at the end."""
    block_rows = max(MIN_BLOCK_ROWS, min(BLOCK_ROWS, -(-n // 4)))
    count = max(1, -(-n // block_rows))
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tile_pairs(n_row_blocks: int, n_col_blocks: int, square: bool) -> list[tuple[int, int]]:
    """(row block, column block) in a fixed order: every unordered pair once in
    the square case (an off-diagonal tile serves both directions), every pair
    otherwise."""
    if square:
        return [(i, j) for i in range(n_row_blocks) for j in range(i, n_row_blocks)]
    return [(i, j) for i in range(n_row_blocks) for j in range(n_col_blocks)]


def _zero_self_pairs(w, q: _Points, k: _Points, i0: int, i1: int, j0: int, j1: int) -> None:
    """w = 0 on the tile's self pairs: query i is key ids[i], on one diagonal."""
    if q.first_id >= k.x.shape[0]:
        return  # the keys are not the queries
    shift = q.first_id + i0 - j0  # the column of row i0's self pair, in tile coordinates
    if -w.shape[0] < shift < w.shape[1]:
        w.diagonal(shift).zero_()


def _weights(q: _Points, k: _Points, i0, i1, j0, j1, euclidean: bool, backward: bool):
    """exp(s) of the tile, in place of the logits, 0 on self pairs; in the
    backward pass also 0 where a Euclidean distance was clamped at 0 (the
    clamp passes no gradient; forward, such a pair is distance 0: w = 1)."""
    s = q.left[i0:i1] @ k.right[j0:j1].T
    if euclidean:
        if backward:
            s.masked_fill_(s > 0.0, -math.inf)
        else:
            s.clamp_max_(0.0)
    w = s.exp_()
    _zero_self_pairs(w, q, k, i0, i1, j0, j1)
    return w


def _block_sizes(q: _Points, k: _Points, square: bool):
    q_blocks = block_bounds(q.x.shape[0])
    k_blocks = q_blocks if square else block_bounds(k.x.shape[0])
    return q_blocks, k_blocks, tile_pairs(len(q_blocks), len(k_blocks), square)


def saved_shapes(queries, keys, precision: str) -> list:
    """``forward`` keeps nothing for the backward pass but its inputs and the
    log-sum-exps: the backward pass recomputes each tile."""
    return []


def forward(queries, keys, query_labels, key_labels, temperature, self_offset: int, distance: str, eps: float,
            precision: str):
    """(rows, lse_all, lse_same, []) of the queries against the keys (``keys``
    None: the queries themselves, square).  Inputs in the compute dtype;
    ``precision`` is the fused kernels' (products here are full fp32 or fp64)."""
    euclidean, square = distance == "euclidean", keys is None
    q, k, same_count = _sides(queries, keys, query_labels, key_labels, temperature, self_offset, euclidean)
    q_blocks, k_blocks, pairs = _block_sizes(q, k, square)
    n = q.x.shape[0]
    sum_all, sum_same = q.x.new_zeros(n), q.x.new_zeros(n)
    onehot_t = None if q.onehot is None or not square else q.onehot.T.contiguous()  # Y^T for Y^T @ W

    def compute(t):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        w = _weights(q, k, i0, i1, j0, j1, euclidean, backward=False)
        columns = square and bi != bj
        if q.onehot is not None:
            per_class = w @ k.onehot[j0:j1]
            rows = per_class.sum(1), per_class.gather(1, q.codes[i0:i1, None]).squeeze(1)
            if not columns:
                return rows, None
            per_class = onehot_t[:, i0:i1] @ w  # not w.T @ Y: MKL runs that layout at a third of the speed
            return rows, (per_class.sum(0), per_class.gather(0, k.codes[None, j0:j1]).squeeze(0))
        same = torch.where(q.codes[i0:i1, None] == k.codes[None, j0:j1], w, 0.0)
        rows = w.sum(1), same.sum(1)
        return rows, ((w.sum(0), same.sum(0)) if columns else None)

    def add(t, sums):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        rows, cols = sums
        sum_all[i0:i1] += rows[0]
        sum_same[i0:i1] += rows[1]
        if cols is not None:
            sum_all[j0:j1] += cols[0]
            sum_same[j0:j1] += cols[1]

    run_in_order(len(pairs), compute, add, workers=_workers(q.x))
    far = FAR[q.x.dtype]
    lse_all, lse_same = log_sums(sum_all, sum_same, same_count, far)
    exact_forward(far_rows(lse_all, lse_same, far), q.x, k.x, query_labels, query_labels if square else key_labels,
                  q.ids, q.aux, k.aux, temperature, euclidean, lse_all, lse_same)
    return rows_loss(lse_all, lse_same, eps), lse_all, lse_same, []


def backward(grad_rows, queries, keys, query_labels, key_labels, temperature, lse_all, lse_same, saved,
             self_offset: int, distance: str, eps: float, precision: str, temperature_grad: bool):
    """(grad_queries, grad_keys or None, grad_temperature or None)."""
    euclidean, square = distance == "euclidean", keys is None
    q, k, _ = _sides(queries, keys, query_labels, key_labels, temperature, self_offset, euclidean)
    q_blocks, k_blocks, pairs = _block_sizes(q, k, square)
    far = FAR[q.x.dtype]
    coef, same_coef, g_all, g_same, far_all, far_same = shared_coefficients(lse_all, lse_same, eps, grad_rows, far)
    # M_ij = a_i + [same] c_i (the rows' terms), plus a_j + [same] c_j in the
    # square case (the columns': s is symmetric, H = G + G^T).  Each side's
    # term is formed in one rounding (with eps = 0 and one class a = -c
    # exactly, so the term is exactly 0, as its derivative is): with few
    # classes M = P_I @ Y_J^T (+ Y_I @ Q_J^T), P_ik = a_i + c_i Y_ik, where
    # every product but one per side is an exact 0
    if q.onehot is not None:
        rows_term = coef[:, None] + same_coef[:, None] * q.onehot
        u, v = (torch.cat([rows_term, q.onehot], 1), torch.cat([q.onehot, rows_term], 1)) if square else (
            rows_term, k.onehot)
    else:
        with_same = coef + same_coef
    # accumulators: sum_j H_ij R_j per query and sum_i H_ij R_i per key (R = [x, 1, ...])
    acc_q = torch.zeros_like(q.right)
    acc_k = acc_q if square else torch.zeros_like(k.right)
    shares: list[torch.Tensor] = []  # sum H * s per tile (the temperature's gradient)

    def compute(t):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        w = _weights(q, k, i0, i1, j0, j1, euclidean, backward=True)
        if q.onehot is not None:
            m = u[i0:i1] @ v[j0:j1].T
        else:
            same = q.codes[i0:i1, None] == k.codes[None, j0:j1]
            if square:
                m = torch.where(same, with_same[i0:i1, None] + with_same[None, j0:j1],
                                coef[i0:i1, None] + coef[None, j0:j1])
            else:
                m = torch.where(same, with_same[i0:i1, None], coef[i0:i1, None])
        h = w.mul_(m)
        rows = h @ k.right[j0:j1]
        # sum_ij H_ij s_ij = sum_i L_i . (H R)_i; a diagonal tile's H = G + G^T holds its pairs' terms twice
        share = (q.left[i0:i1] * rows).sum() * (0.5 if square and bi == bj else 1.0) if temperature_grad else None
        cols = None if square and bi == bj else h.T @ q.right[i0:i1]
        return rows, cols, share

    def add(t, parts):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        rows, cols, share = parts
        acc_q[i0:i1] += rows
        if cols is not None:
            acc_k[j0:j1] += cols
        if share is not None:
            shares.append(share)

    run_in_order(len(pairs), compute, add, workers=_workers(q.x))
    d = q.x.shape[1]
    raw_q, hsum_q = acc_q[:, :d].contiguous(), acc_q[:, d].contiguous()
    raw_k, hsum_k = (raw_q, hsum_q) if square else (acc_k[:, :d].contiguous(), acc_k[:, d].contiguous())
    # the far rows' terms, each with its own maximum
    share = exact_backward(far_all, far_same, q.x, k.x, query_labels, query_labels if square else key_labels, q.ids,
                           q.aux, k.aux, temperature, euclidean, lse_all, lse_same, g_all, g_same,
                           raw_q, hsum_q, raw_k, hsum_k)
    grad_q = _points_gradient(raw_q, hsum_q, q, temperature, euclidean)
    grad_k = None if square else _points_gradient(raw_k, hsum_k, k, temperature, euclidean)
    grad_t = None
    if temperature_grad:
        weighted = (torch.stack(shares).sum() if shares else temperature.new_zeros(())) + share
        grad_t = -weighted / temperature  # s = -d / T: ds/dT = -s / T
    return grad_q, grad_k, grad_t


def _points_gradient(raw, hsum, points: _Points, temperature, euclidean: bool):
    """From sum_j H_ij x_j (and sum_j H_ij) to the gradient of the raw points."""
    if euclidean:  # s_ij = -|x_i - x_j|^2 / T
        return -2.0 * (hsum[:, None] * points.x - raw) / temperature
    # s_ij = (<x_i, x_j> - 1) / T with x = z / |z|: the Jacobian (I - x x^T) / |z|
    # (just 1 / NORM_EPS where |z| was floored)
    g = raw / temperature
    radial = torch.where(points.aux > NORM_EPS, (points.x * g).sum(1), 0.0)
    return (g - points.x * radial[:, None]) / points.aux[:, None]


def _workers(x: torch.Tensor) -> int:
    """Worker threads: torch's thread count on the CPU; one (the caller) on a
    GPU, whose work is asynchronous anyway."""
    return torch.get_num_threads() if x.device.type == "cpu" else 1
