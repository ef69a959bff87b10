"""The tiles of the CPU path: blocks of rows, the pairs of blocks, and the
passes over them (the sums forward, the gradient sums backward), each tile
a few large torch operations computed by the workers (``workers``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .points import Points
from .workers import run_in_order

# Rows of a block.  512^2 tiles (1 MiB in fp32) keep the products near the
# GEMM's peak and give a 4,096 batch 36 tiles to share out: enough that a
# descheduled worker's last tile is a small part of a pass.  Smaller blocks
# measured slower at every batch size (b = 1,024, 2 threads: 8.7 ms with
# 512-row blocks, 10.9 ms with 256, 12.2 ms with 128); a batch of at most
# one block is one tile, computed in the caller with its own threads.
BLOCK_ROWS = 512
# exp() of a logit below -SUBNORMAL[dtype] is subnormal, which the CPU
# computes a hundred times slower (1M fp32 exps of -100: 35 ms against 0.4 ms
# for -10, one thread, here).  Such terms are dropped (exactly 0): no sum that
# the shared scale keeps can resolve them (``rowwise.FAR``), and rows whose
# sums are that small are recomputed at their own scale.  The worker threads
# flush subnormal results to 0 too (``workers``).
SUBNORMAL = {torch.float32: 87.0, torch.float64: 708.0}


@dataclass
class GradientSums:
    """What the backward pass adds up, per query (``_q``) and per key (``_k``;
    the same tensors in the square case): raw = sum_j H_ij x_j and hsum =
    sum_j H_ij, and share = sum_ij H_ij s_ij (the temperature's gradient)."""

    raw_q: torch.Tensor
    hsum_q: torch.Tensor
    raw_k: torch.Tensor
    hsum_k: torch.Tensor
    share: torch.Tensor

    def add(self, other: GradientSums, rows: torch.Tensor) -> None:
        """``other``'s sums, computed for the queries ``rows`` only, added in."""
        self.raw_q[rows] += other.raw_q
        self.hsum_q[rows] += other.hsum_q
        self.raw_k += other.raw_k
        self.hsum_k += other.hsum_k
        self.share = self.share + other.share


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


def fill_self_pairs(w, q: Points, k: Points, i0: int, i1: int, j0: int, j1: int, value: float = 0.0) -> None:
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


def floor_of(q: Points, k: Points) -> float | None:
    """The logit below which a term is dropped (its exp would be subnormal),
    or None when no logit of these points can be so small (on the CPU, from
    the distances' bound: 2 for the cosine, (|x|max + |y|max)^2 Euclidean)."""
    limit = SUBNORMAL[q.x.dtype]
    if q.x.device.type != "cpu":
        return -limit
    reach = float((q.aux.max().sqrt() + k.aux.max().sqrt()) ** 2) if q.euclidean else 2.0
    return -limit if reach * q.scale >= limit else None


def weights(q: Points, k: Points, i0, i1, j0, j1, backward: bool, floor, shift=None):
    """exp(s - shift_i) of the tile (shift 0 by default: the shared scale), in
    place of the logits, 0 on self pairs and below ``floor``; in the backward
    pass also 0 where a Euclidean distance was clamped at 0 (the clamp passes
    no gradient; forward, such a pair is distance 0: s = 0)."""
    s = q.logits(k, slice(i0, i1), slice(j0, j1))
    if q.euclidean:
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
    fill_self_pairs(w, q, k, i0, i1, j0, j1)
    return w


def tile_count(queries, keys) -> int:
    n_q = len(block_bounds(queries.shape[0]))
    return len(tile_pairs(n_q, n_q if keys is None else len(block_bounds(keys.shape[0])), keys is None))


def tiles(q: Points, k: Points, square: bool):
    q_blocks = block_bounds(q.x.shape[0])
    k_blocks = q_blocks if square else block_bounds(k.x.shape[0])
    return q_blocks, k_blocks, tile_pairs(len(q_blocks), len(k_blocks), square)


def row_max(q: Points, k: Points, workers: int):
    """max_j s_ij per query (the self pair left out)."""
    q_blocks, k_blocks, pairs = tiles(q, k, False)
    best = torch.full((q.x.shape[0],), -math.inf, dtype=q.x.dtype, device=q.x.device)

    def compute(t):
        (i0, i1), (j0, j1) = q_blocks[pairs[t][0]], k_blocks[pairs[t][1]]
        s = q.logits(k, slice(i0, i1), slice(j0, j1))
        if q.euclidean:
            s.clamp_max_(0.0)
        fill_self_pairs(s, q, k, i0, i1, j0, j1, -math.inf)
        return s.amax(1)

    def add(t, tile_max):
        i0, i1 = q_blocks[pairs[t][0]]
        torch.maximum(best[i0:i1], tile_max, out=best[i0:i1])

    run_in_order(len(pairs), compute, add, workers=workers)
    return best


def sums(q: Points, k: Points, square: bool, workers: int, floor, shift=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, N) per query: sum_j exp(s_ij - shift_i) over all keys and over its
    class's, tile by tile."""
    q_blocks, k_blocks, pairs = tiles(q, k, square)
    n = q.x.shape[0]
    sum_all, sum_same = q.x.new_zeros(n), q.x.new_zeros(n)
    onehot_t = None if q.onehot is None or not square else q.onehot.T.contiguous()  # Y^T for Y^T @ W

    def compute(t):
        bi, bj = pairs[t]
        (i0, i1), (j0, j1) = q_blocks[bi], k_blocks[bj]
        w = weights(q, k, i0, i1, j0, j1, backward=False, floor=floor, shift=shift)
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


def gradient_sums(
    q: Points, k: Points, a, c, square: bool, temperature_grad: bool, workers: int, floor, shift=None
) -> GradientSums:
    """(sum_j H_ij x_j and sum_j H_ij per query, sum_i H_ij x_i and sum_i
    H_ij per key (the same tensors in the square case), sum H * s) for
    H_ij = exp(s_ij - shift_i) M_ij,
    M_ij = a_i + [same] c_i (the rows' terms), plus a_j + [same] c_j in the
    square case (the columns': s is symmetric, H = G + G^T).

    Each side's term of M is formed in one rounding (with eps = 0 and one
    class a = -c exactly, so the term is exactly 0, as its derivative is):
    with few classes M = P_I @ Y_J^T (+ Y_I @ Q_J^T), P_ik = a_i + c_i Y_ik,
    where every product but one per side is an exact 0."""
    q_blocks, k_blocks, pairs = tiles(q, k, square)
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
        w = weights(q, k, i0, i1, j0, j1, backward=True, floor=floor, shift=shift)
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
    return GradientSums(raw_q, hsum_q, raw_k, hsum_k, torch.stack(shares).sum() if shares else q.x.new_zeros(()))
