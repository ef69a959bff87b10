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

from ...kernels import NORM_EPS
from ..rowwise import rows_loss
from ..shared_exp import FAR, exact_backward, exact_forward, far_rows, log_sums, shared_coefficients
from ..workers import caller_single_threaded, run_in_order

# Rows of a block.  512^2 tiles (1 MiB in fp32) keep the products near the
# GEMM's peak and give a 4,096 batch 36 tiles to share out: enough that a
# descheduled worker's last tile is a small part of a pass.  Smaller blocks
# measured slower at every batch size (b = 1,024, 2 threads: 8.7 ms with
# 512-row blocks, 10.9 ms with 256, 12.2 ms with 128); a batch of at most
# one block is one tile, computed in the caller with its own threads.
BLOCK_ROWS = 512
# Up to this many classes among the keys, sums per class come from thin
# products with one-hot label matrices (columns padded to a multiple of 16:
# MKL's thin products run 4x faster with 16 columns than with 10); with more,
# labels are compared pair by pair.
ONEHOT_MAX_CLASSES = 32
# exp() of a logit below -SUBNORMAL[dtype] is subnormal, which the CPU
# computes a hundred times slower (1M fp32 exps of -100: 35 ms against 0.4 ms
# for -10, one thread, here).  Such terms are dropped (exactly 0): no sum that
# the shared scale keeps can resolve them (``shared_exp.FAR``), and rows whose
# sums are that small are recomputed at their own scale.  The worker threads
# flush subnormal results to 0 too (``workers``).
SUBNORMAL = {torch.float32: 87.0, torch.float64: 708.0}


@dataclass
class _Points:
    """One side of the pairs (queries or keys), prepared for the tiles.

    ``right`` is R = [x, 1] (cosine) or [x, 1, |x|^2] (Euclidean): the tiles'
    products H @ R give sum_j H_ij x_j and, from the column of ones, sum_j
    H_ij at once.  The logits: s = scale (<x_i, x_j> - 1) for the cosine
    distance (one product with a scaled bias, ``torch.addmm``: no scaled copy
    of the points), s = L_i . R_j with L = [2x / T, -|x|^2 / T, -1 / T] for
    the Euclidean one."""

    right: torch.Tensor  # R (x is a view of its first columns)
    aux: torch.Tensor  # norms (cosine) or squared norms (Euclidean)
    left: torch.Tensor | None  # L (Euclidean)
    scale: float  # 1 / T
    codes: torch.Tensor  # labels as dense int64 codes (shared by queries and keys)
    onehot: torch.Tensor | None  # (n, classes padded to 16), or None with many classes
    ids: torch.Tensor  # the rows' indices among the keys (self pairs), or past their end: none
    first_id: int | None  # ids[0], known on the host; None for a subset of the rows (``take``)

    @property
    def x(self) -> torch.Tensor:
        """The unit rows (cosine) or the points (Euclidean)."""
        return self.right[:, : self.dim]

    @property
    def dim(self) -> int:
        return self.right.shape[1] - (1 if self.left is None else 2)

    def take(self, index: torch.Tensor) -> _Points:
        """The rows ``index`` (the far rows' pass)."""
        return _Points(
            self.right[index],
            self.aux[index],
            None if self.left is None else self.left[index],
            self.scale,
            self.codes[index],
            None if self.onehot is None else self.onehot[index],
            self.ids[index],
            None,
        )

    def logits(self, keys: _Points, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """s of rows i0:i1 against keys j0:j1 (Euclidean distances not yet clamped)."""
        if self.left is None:
            x, y = self.x[i0:i1], keys.x[j0:j1]
            return torch.addmm(x.new_full((), -self.scale), x, y.T, alpha=self.scale)
        return self.left[i0:i1] @ keys.right[j0:j1].T

    def logit_share(self, rows: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """sum_i L_i . (H R)_i over rows i0:i1 = sum_ij H_ij s_ij, from ``rows`` = (H R)_i."""
        if self.left is None:  # L = scale [x, -1]
            d = self.dim
            return self.scale * ((self.x[i0:i1] * rows[:, :d]).sum() - rows[:, d].sum())
        return (self.left[i0:i1] * rows).sum()


def _prepare(z, temperature, euclidean: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """(R, aux, L, 1 / T): see ``_Points``."""
    n, d = z.shape
    scale = 1.0 / float(temperature)  # on the CPU a read of memory; on a GPU one synchronisation
    if euclidean:
        right = z.new_empty(n, d + 2)
        right[:, :d] = z
        right[:, d] = 1.0
        sq = torch.linalg.vector_norm(z, dim=1).square_()
        right[:, d + 1] = sq
        left = torch.cat([z * (2.0 * scale), (-scale * sq)[:, None], z.new_full((n, 1), -scale)], 1)
        return right, sq, left, scale
    norm = torch.linalg.vector_norm(z, dim=1).clamp_min_(NORM_EPS)
    right = z.new_empty(n, d + 1)
    torch.div(z, norm[:, None], out=right[:, :d])
    right[:, d] = 1.0
    return right, norm, None, scale


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
    q = _Points(
        *_prepare(queries, temperature, euclidean), q_codes, None if onehot is None else onehot[:n_q], q_ids, start
    )
    if square:
        return q, q, same_count
    k = _Points(
        *_prepare(keys, temperature, euclidean),
        k_codes,
        None if onehot is None else onehot[n_q:],
        torch.arange(n_keys, device=keys.device),
        0,
    )
    return q, k, same_count


def block_bounds(n: int) -> list[tuple[int, int]]:
    """Nearly equal blocks of at most BLOCK_ROWS rows, with no sliver at the end."""
    count = max(1, -(-n // BLOCK_ROWS))
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def tile_pairs(n_row_blocks: int, n_col_blocks: int, square: bool) -> list[tuple[int, int]]:
    """(row block, column block) in a fixed order: every unordered pair once in
    the square case (an off-diagonal tile serves both directions), every pair
    otherwise."""
    if square:
        return [(i, j) for i in range(n_row_blocks) for j in range(i, n_row_blocks)]
    return [(i, j) for i in range(n_row_blocks) for j in range(n_col_blocks)]


def _fill_self_pairs(w, q: _Points, k: _Points, i0: int, i1: int, j0: int, j1: int, value: float = 0.0) -> None:
    """w = ``value`` on the tile's self pairs: query i is key ids[i], on one
    diagonal (on scattered entries for a subset of the rows, ``first_id`` None)."""
    if q.first_id is None:
        ids = q.ids[i0:i1]
        rows = torch.nonzero((ids >= j0) & (ids < j1)).flatten()
        w[rows, ids[rows] - j0] = value
        return
    if q.first_id >= k.x.shape[0]:
        return  # the keys are not the queries
    shift = q.first_id + i0 - j0  # the column of row i0's self pair, in tile coordinates
    if -w.shape[0] < shift < w.shape[1]:
        w.diagonal(shift).fill_(value)


def _floor(q: _Points, k: _Points, temperature, euclidean: bool) -> float | None:
    """The logit below which a term is dropped (its exp would be subnormal),
    or None when no logit of these points can be so small (on the CPU, from
    the distances' bound: 2 for the cosine, (|x|max + |y|max)^2 Euclidean)."""
    limit = SUBNORMAL[q.x.dtype]
    if q.x.device.type != "cpu":
        return -limit
    reach = float((q.aux.max().sqrt() + k.aux.max().sqrt()) ** 2) if euclidean else 2.0
    return -limit if reach / float(temperature) >= limit else None


def _weights(q: _Points, k: _Points, i0, i1, j0, j1, euclidean: bool, backward: bool, floor, shift=None):
    """exp(s - shift_i) of the tile (shift 0 by default: the shared scale), in
    place of the logits, 0 on self pairs and below ``floor``; in the backward
    pass also 0 where a Euclidean distance was clamped at 0 (the clamp passes
    no gradient; forward, such a pair is distance 0: s = 0)."""
    s = q.logits(k, i0, i1, j0, j1)
    if euclidean:
        if backward:
            s.masked_fill_(s > 0.0, -math.inf)
        else:
            s.clamp_max_(0.0)
    if shift is not None:
        s.sub_(shift[i0:i1, None])
    if floor is not None:
        # s if s > floor else -inf, in one pass (torch's stubs omit the in-place form)
        torch.nn.functional.threshold_(s, floor, -math.inf)  # type: ignore[attr-defined]
    w = s.exp_()
    _fill_self_pairs(w, q, k, i0, i1, j0, j1)
    return w


def _tile_count(queries, keys) -> int:
    n_q = len(block_bounds(queries.shape[0]))
    return len(tile_pairs(n_q, n_q if keys is None else len(block_bounds(keys.shape[0])), keys is None))


def _tiles(q: _Points, k: _Points, square: bool):
    q_blocks = block_bounds(q.x.shape[0])
    k_blocks = q_blocks if square else block_bounds(k.x.shape[0])
    return q_blocks, k_blocks, tile_pairs(len(q_blocks), len(k_blocks), square)


def _row_max(q: _Points, k: _Points, euclidean: bool, workers: int):
    """max_j s_ij per query (the self pair left out)."""
    q_blocks, k_blocks, pairs = _tiles(q, k, False)
    best = torch.full((q.x.shape[0],), -math.inf, dtype=q.x.dtype, device=q.x.device)

    def compute(t):
        (i0, i1), (j0, j1) = q_blocks[pairs[t][0]], k_blocks[pairs[t][1]]
        s = q.logits(k, i0, i1, j0, j1)
        if euclidean:
            s.clamp_max_(0.0)
        _fill_self_pairs(s, q, k, i0, i1, j0, j1, -math.inf)
        return s.amax(1)

    def add(t, tile_max):
        i0, i1 = q_blocks[pairs[t][0]]
        torch.maximum(best[i0:i1], tile_max, out=best[i0:i1])

    run_in_order(len(pairs), compute, add, workers=workers)
    return best


def _sums(
    q: _Points, k: _Points, square: bool, euclidean: bool, workers: int, floor, shift=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, N) per query: sum_j exp(s_ij - shift_i) over all keys and over its
    class's, tile by tile."""
    q_blocks, k_blocks, pairs = _tiles(q, k, square)
    n = q.x.shape[0]
    sum_all, sum_same = q.x.new_zeros(n), q.x.new_zeros(n)
    onehot_t = None if q.onehot is None or not square else q.onehot.T.contiguous()  # Y^T for Y^T @ W

    def compute(t):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        w = _weights(q, k, i0, i1, j0, j1, euclidean, backward=False, floor=floor, shift=shift)
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

    run_in_order(len(pairs), compute, add, workers=workers)
    return sum_all, sum_same


def _gradient_sums(
    q: _Points, k: _Points, a, c, square: bool, euclidean: bool, temperature_grad: bool, workers: int, floor, shift=None
):
    """(sum_j H_ij x_j and sum_j H_ij per query, sum_i H_ij x_i and sum_i
    H_ij per key (the same tensors in the square case), sum H * s) for
    H_ij = exp(s_ij - shift_i) M_ij,
    M_ij = a_i + [same] c_i (the rows' terms), plus a_j + [same] c_j in the
    square case (the columns': s is symmetric, H = G + G^T).

    Each side's term of M is formed in one rounding (with eps = 0 and one
    class a = -c exactly, so the term is exactly 0, as its derivative is):
    with few classes M = P_I @ Y_J^T (+ Y_I @ Q_J^T), P_ik = a_i + c_i Y_ik,
    where every product but one per side is an exact 0."""
    q_blocks, k_blocks, pairs = _tiles(q, k, square)
    if q.onehot is not None:
        rows_term = a[:, None] + c[:, None] * q.onehot
        u, v = (
            (torch.cat([rows_term, q.onehot], 1), torch.cat([q.onehot, rows_term], 1))
            if square
            else (rows_term, k.onehot)
        )
    else:
        with_same = a + c
    d = q.dim
    raw_q, hsum_q = q.x.new_zeros(q.x.shape), q.x.new_zeros(q.x.shape[0])
    raw_k, hsum_k = (raw_q, hsum_q) if square else (k.x.new_zeros(k.x.shape), k.x.new_zeros(k.x.shape[0]))
    shares: list[torch.Tensor] = []  # sum H * s per tile (the temperature's gradient)

    def compute(t):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        w = _weights(q, k, i0, i1, j0, j1, euclidean, backward=True, floor=floor, shift=shift)
        if q.onehot is not None:
            m = u[i0:i1] @ v[j0:j1].T
        else:
            same = q.codes[i0:i1, None] == k.codes[None, j0:j1]
            if square:
                m = torch.where(same, with_same[i0:i1, None] + with_same[None, j0:j1], a[i0:i1, None] + a[None, j0:j1])
            else:
                m = torch.where(same, with_same[i0:i1, None], a[i0:i1, None])
        h = w.mul_(m)
        rows = h @ k.right[j0:j1]
        # sum_ij H_ij s_ij = sum_i L_i . (H R)_i (L, the unshifted logits' operand);
        # a diagonal tile's H = G + G^T holds its pairs' terms twice
        share = q.logit_share(rows, i0, i1) * (0.5 if square and bi == bj else 1.0) if temperature_grad else None
        cols = None if square and bi == bj else h.T @ q.right[i0:i1]
        return rows, cols, share

    def add(t, parts):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        rows, cols, share = parts
        raw_q[i0:i1] += rows[:, :d]
        hsum_q[i0:i1] += rows[:, d]
        if cols is not None:
            raw_k[j0:j1] += cols[:, :d]
            hsum_k[j0:j1] += cols[:, d]
        if share is not None:
            shares.append(share)

    run_in_order(len(pairs), compute, add, workers=workers)
    return raw_q, hsum_q, raw_k, hsum_k, torch.stack(shares).sum() if shares else q.x.new_zeros(())


def saved_shapes(queries, keys, precision: str) -> list:
    """``forward`` keeps nothing for the backward pass but its inputs and the
    log-sum-exps: the backward pass recomputes each tile."""
    return []


def forward(
    queries, keys, query_labels, key_labels, temperature, self_offset: int, distance: str, eps: float, precision: str
):
    """(rows, lse_all, lse_same, []) of the queries against the keys (``keys``
    None: the queries themselves, square).  Inputs in the compute dtype;
    ``precision`` is the fused kernels' (products here are full fp32 or fp64)."""
    with caller_single_threaded(queries, _tile_count(queries, keys)) as workers:
        euclidean, square = distance == "euclidean", keys is None
        q, k, same_count = _sides(queries, keys, query_labels, key_labels, temperature, self_offset, euclidean)
        far, floor = FAR[q.x.dtype], _floor(q, k, temperature, euclidean)
        lse_all, lse_same = log_sums(*_sums(q, k, square, euclidean, workers, floor), same_count, far)
        index = far_rows(lse_all, lse_same, far)
        if index.numel():
            # the far rows again at their own scale, their largest logit: every
            # sum over all keys is at least 1 then
            rows = q.take(index)
            scale = _row_max(rows, k, euclidean, workers)
            sum_all, sum_same = _sums(rows, k, False, euclidean, workers, floor, shift=scale)
            kept = sum_same > math.exp(-far)  # a same-class sum that lost no precision
            lse_all[index] = scale + torch.log(sum_all)
            lse_same[index] = torch.where(kept, scale + torch.log(sum_same), -math.inf)
            # same-class sums far below the total: exactly, with their own running maximum
            exact_forward(
                index[~kept & (same_count[index] > 0)],
                q.x,
                k.x,
                query_labels,
                query_labels if square else key_labels,
                q.ids,
                q.aux,
                k.aux,
                temperature,
                euclidean,
                lse_all,
                lse_same,
            )
        return rows_loss(lse_all, lse_same, eps), lse_all, lse_same, []


def backward(
    grad_rows,
    queries,
    keys,
    query_labels,
    key_labels,
    temperature,
    lse_all,
    lse_same,
    saved,
    self_offset: int,
    distance: str,
    eps: float,
    precision: str,
    temperature_grad: bool,
):
    """(grad_queries, grad_keys or None, grad_temperature or None)."""
    with caller_single_threaded(queries, _tile_count(queries, keys)) as workers:
        euclidean, square = distance == "euclidean", keys is None
        q, k, _ = _sides(queries, keys, query_labels, key_labels, temperature, self_offset, euclidean)
        far, floor = FAR[q.x.dtype], _floor(q, k, temperature, euclidean)
        coef, same_coef, g_all, g_same, far_all, far_same = shared_coefficients(lse_all, lse_same, eps, grad_rows, far)
        raw_q, hsum_q, raw_k, hsum_k, share = _gradient_sums(
            q, k, coef, same_coef, square, euclidean, temperature_grad, workers, floor
        )
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
            far = _gradient_sums(
                q.take(rows), k, a, c, False, euclidean, temperature_grad, workers, floor, shift=lse_all[rows]
            )
            raw_q[rows] += far[0]
            hsum_q[rows] += far[1]
            raw_k += far[2]
            hsum_k += far[3]
            share = share + far[4]
            exact[index[~shifted]] = True
        share = share + exact_backward(
            far_all & exact,
            far_same & exact,
            q.x,
            k.x,
            query_labels,
            query_labels if square else key_labels,
            q.ids,
            q.aux,
            k.aux,
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
        )
        grad_q = _points_gradient(raw_q, hsum_q, q, temperature, euclidean)
        grad_k = None if square else _points_gradient(raw_k, hsum_k, k, temperature, euclidean)
        grad_t = -share / temperature if temperature_grad else None  # s = -d / T: ds/dT = -s / T
        return grad_q, grad_k, grad_t


def _points_gradient(raw, hsum, points: _Points, temperature, euclidean: bool):
    """From sum_j H_ij x_j (and sum_j H_ij) to the gradient of the raw points,
    in place of ``raw``."""
    if euclidean:  # s_ij = -|x_i - x_j|^2 / T: -2 (hsum_i x_i - raw_i) / T
        return raw.addcmul_(points.x, hsum[:, None], value=-1.0).mul_(2.0 * points.scale)
    # s_ij = (<x_i, x_j> - 1) / T with x = z / |z|: the Jacobian (I - x x^T) / |z|
    # (just 1 / NORM_EPS where |z| was floored)
    g = raw.mul_(points.scale)
    radial = (points.x[:, None, :] @ g[:, :, None]).view(-1)  # <x_i, g_i>, no (n, d) temporary
    radial = torch.where(points.aux > NORM_EPS, radial, 0.0)
    return g.addcmul_(points.x, radial[:, None], value=-1.0).div_(points.aux[:, None])
