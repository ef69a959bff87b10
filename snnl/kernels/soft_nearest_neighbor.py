"""Fused Triton kernels for the soft nearest neighbor loss (FlashAttention style).

The loss compares query rows with key rows; in the ordinary (square) case the
queries are the keys, and under torch.distributed a process's own rows are the
queries and the gathered global batch the keys.  Query i is key
``offset + i``, and that self pair is excluded.

Forward: each program owns BLOCK_M query rows and streams over key tiles,
keeping an online maximum and running sum for two log-sum-exps per row (all
pairs, same-class pairs; each with its own maximum so neither underflows at
small temperatures).  Only those two numbers per row leave the kernel.

Backward: one kernel, run in up to two passes, recomputes the tiles from the
saved per-row values.  A program owns a block of "rows" and loops over
"columns", accumulating sum_j H_ij c_j with H_ij = dL/ds for the pair, where
the loss side of a pair may be the row (its own term) or the column (the
transposed term).  Square case: one pass with both terms (the logits are
symmetric).  Queries vs keys: a pass over query blocks with their own term
(gradient of the queries) and a pass over key blocks with the transposed term
(gradient of the keys).  Every program writes only its own rows: no atomics,
deterministic results.

Points are prepared by the caller: unit rows for the cosine distance, raw rows
(and their squared norms) for the squared Euclidean distance.  Accumulation is
fp32 (fp64 for fp64 inputs); offsets are 64-bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _logits_tile(
    ROWS, COLS, ROW_SQ, COL_SQ, rows, cols, row_ok, col_ok, temperature, dim, row_stride, col_stride,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """s = -d / T for a BLOCK_M x BLOCK_N tile, and the mask of unclamped distances."""
    if FP64:
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        k_ok = ks < dim
        a = tl.load(ROWS + rows[:, None] * row_stride + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(COLS + cols[:, None] * col_stride + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if IEEE:
            dots += tl.dot(a, tl.trans(b), input_precision="ieee")
        else:
            dots += tl.dot(a, tl.trans(b))
    if EUCLIDEAN:
        sq_rows = tl.load(ROW_SQ + rows, mask=row_ok, other=0.0)
        sq_cols = tl.load(COL_SQ + cols, mask=col_ok, other=0.0)
        raw = sq_rows[:, None] + sq_cols[None, :] - 2.0 * dots
        return -tl.maximum(raw, 0.0) / temperature, raw >= 0.0
    return -(1.0 - dots) / temperature, tl.full((BLOCK_M, BLOCK_N), 1, tl.int1)


@triton.jit
def _online_logsumexp(running_max, running_sum, tile):
    """Fold a tile (-inf where masked) into a per-row (max, sum of exp(s - max))."""
    new_max = tl.maximum(running_max, tl.max(tile, axis=1))
    # A row that has seen only masked entries keeps max -inf; shift by 0 instead.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(tile - shift[:, None]), axis=1)
    return new_max, running_sum


@triton.jit
def _forward_kernel(
    Q, K, Q_LABELS, K_LABELS, Q_SQ, K_SQ, TEMPERATURE, LSE_ALL, LSE_SAME,
    n_queries, n_keys, offset, dim, q_stride, k_stride,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_queries
    temperature = tl.load(TEMPERATURE)
    row_labels = tl.load(Q_LABELS + rows, mask=row_ok, other=0)
    if FP64:
        max_all = tl.full((BLOCK_M,), float("-inf"), tl.float64)
        sum_all = tl.zeros((BLOCK_M,), tl.float64)
    else:
        max_all = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        sum_all = tl.zeros((BLOCK_M,), tl.float32)
    max_same = max_all
    sum_same = sum_all
    for c0 in range(0, n_keys, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n_keys
        logits, _ = _logits_tile(
            Q, K, Q_SQ, K_SQ, rows, cols, row_ok, col_ok, temperature, dim, q_stride, k_stride,
            EUCLIDEAN, FP64, IEEE, BLOCK_M, BLOCK_N, BLOCK_D,
        )
        col_labels = tl.load(K_LABELS + cols, mask=col_ok, other=0)
        pair_ok = col_ok[None, :] & ((rows + offset)[:, None] != cols[None, :])
        same = pair_ok & (row_labels[:, None] == col_labels[None, :])
        max_all, sum_all = _online_logsumexp(max_all, sum_all, tl.where(pair_ok, logits, float("-inf")))
        max_same, sum_same = _online_logsumexp(max_same, sum_same, tl.where(same, logits, float("-inf")))
    # log() only of positive sums: tl.where evaluates both sides.
    lse_all = tl.where(sum_all > 0.0, max_all + tl.log(tl.where(sum_all > 0.0, sum_all, 1.0)), float("-inf"))
    lse_same = tl.where(sum_same > 0.0, max_same + tl.log(tl.where(sum_same > 0.0, sum_same, 1.0)), float("-inf"))
    tl.store(LSE_ALL + rows, lse_all, mask=row_ok)
    tl.store(LSE_SAME + rows, lse_same, mask=row_ok)


@triton.jit
def _grad_logits(logits, lse_all, lse_same, g_all, g_same, pair_ok, same):
    """d loss / d s for the pairs of a tile, given the loss side's per-row values
    (broadcast along rows or columns by the caller)."""
    # Mask before exp(): off-mask exponents may be huge and must not become inf.
    p_all = tl.exp(tl.where(pair_ok, logits - lse_all, float("-inf")))
    p_same = tl.exp(tl.where(same, logits - lse_same, float("-inf")))
    return g_all * p_all + g_same * p_same


@triton.jit
def _backward_kernel(
    ROWS, COLS, ROW_LABELS, COL_LABELS, ROW_SQ, COL_SQ, TEMPERATURE,
    ROW_LSE_ALL, ROW_LSE_SAME, ROW_G_ALL, ROW_G_SAME,
    COL_LSE_ALL, COL_LSE_SAME, COL_G_ALL, COL_G_SAME,
    GRAD, H_SUM, WEIGHTED_LOGITS,
    n_rows, n_cols, row_offset, col_offset, dim, row_stride, col_stride, grad_stride,
    OWN_TERM: tl.constexpr, THEIR_TERM: tl.constexpr,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, IEEE: tl.constexpr, IEEE_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACCUMULATE_IN_REGISTERS: tl.constexpr,
):
    """Writes GRAD[i] = sum_j H_ij c_j, H_SUM[i] = sum_j H_ij (Euclidean distance)
    and, with OWN_TERM, WEIGHTED_LOGITS[i] = sum_j dl_i/ds_ij * s_ij (temperature
    gradient).  H_ij sums dl_i/ds_ij (OWN_TERM, from the row's values) and
    dl_j/ds_ij (THEIR_TERM, from the column's values).  A pair is the self pair
    when row_offset + i == col_offset + j.

    The LSE_SAME arrays hold a finite stand-in where a row has no same-class
    neighbour (its G_SAME is 0), so exp() never meets -inf - (-inf).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    temperature = tl.load(TEMPERATURE)
    row_labels = tl.load(ROW_LABELS + rows, mask=row_ok, other=0)
    if OWN_TERM:
        row_lse_all = tl.load(ROW_LSE_ALL + rows, mask=row_ok, other=0.0)
        row_lse_same = tl.load(ROW_LSE_SAME + rows, mask=row_ok, other=0.0)
        row_g_all = tl.load(ROW_G_ALL + rows, mask=row_ok, other=0.0)
        row_g_same = tl.load(ROW_G_SAME + rows, mask=row_ok, other=0.0)
    ks = tl.arange(0, BLOCK_D)
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float64)
        h_sum = tl.zeros((BLOCK_M,), tl.float64)
        weighted = tl.zeros((BLOCK_M,), tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        h_sum = tl.zeros((BLOCK_M,), tl.float32)
        weighted = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n_cols
        logits, unclamped = _logits_tile(
            ROWS, COLS, ROW_SQ, COL_SQ, rows, cols, row_ok, col_ok, temperature, dim, row_stride, col_stride,
            EUCLIDEAN, FP64, IEEE, BLOCK_M, BLOCK_N, BLOCK_D,
        )
        col_labels = tl.load(COL_LABELS + cols, mask=col_ok, other=0)
        pair_ok = row_ok[:, None] & col_ok[None, :] & ((rows + row_offset)[:, None] != (cols + col_offset)[None, :])
        same = pair_ok & (row_labels[:, None] == col_labels[None, :])
        h = tl.zeros_like(logits)
        if OWN_TERM:
            grad_own = _grad_logits(
                logits, row_lse_all[:, None], row_lse_same[:, None],
                row_g_all[:, None], row_g_same[:, None], pair_ok, same,
            )
            weighted += tl.sum(grad_own * tl.where(pair_ok, logits, 0.0), axis=1)
            h += grad_own
        if THEIR_TERM:
            col_lse_all = tl.load(COL_LSE_ALL + cols, mask=col_ok, other=0.0)
            col_lse_same = tl.load(COL_LSE_SAME + cols, mask=col_ok, other=0.0)
            col_g_all = tl.load(COL_G_ALL + cols, mask=col_ok, other=0.0)
            col_g_same = tl.load(COL_G_SAME + cols, mask=col_ok, other=0.0)
            h += _grad_logits(
                logits, col_lse_all[None, :], col_lse_same[None, :],
                col_g_all[None, :], col_g_same[None, :], pair_ok, same,
            )
        h = tl.where(unclamped, h, 0.0)
        h_sum += tl.sum(h, axis=1)
        if ACCUMULATE_IN_REGISTERS:  # the whole feature dimension fits in one chunk
            k_ok = ks < dim
            c = tl.load(COLS + cols[:, None] * col_stride + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if IEEE_GRAD:
                acc += tl.dot(h, c.to(h.dtype), input_precision="ieee")
            else:
                acc += tl.dot(h, c.to(h.dtype))
        else:  # wide features: read-modify-write this program's own rows, chunk by chunk
            for k0 in range(0, dim, BLOCK_D):
                kk = k0 + ks
                k_ok = kk < dim
                c = tl.load(COLS + cols[:, None] * col_stride + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if IEEE_GRAD:
                    part = tl.dot(h, c.to(h.dtype), input_precision="ieee")
                else:
                    part = tl.dot(h, c.to(h.dtype))
                out = GRAD + rows[:, None] * grad_stride + kk[None, :]
                out_ok = row_ok[:, None] & k_ok[None, :]
                tl.store(out, tl.load(out, mask=out_ok, other=0.0) + part, mask=out_ok)
    if ACCUMULATE_IN_REGISTERS:
        out_ok = row_ok[:, None] & (ks < dim)[None, :]
        tl.store(GRAD + rows[:, None] * grad_stride + ks[None, :], acc, mask=out_ok)
    tl.store(H_SUM + rows, h_sum, mask=row_ok)
    if OWN_TERM:
        tl.store(WEIGHTED_LOGITS + rows, weighted, mask=row_ok)


# --------------------------------------------------------------------------- launchers


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _half(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


def choose_blocks(n: int, dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D) for a problem: the whole feature dimension in
    one chunk up to 128 (tl.dot wants every side >= 16), smaller row blocks for
    small batches so more programs run at once."""
    block_d = min(128, max(16, triton.next_power_of_2(dim)))
    block_m = 32 if n <= 16384 else 64
    return block_m, 64, block_d


def forward(queries, keys, query_labels, key_labels, query_sq, key_sq, temperature, offset=0, *,
            blocks=None, num_warps=4):
    """Per-query (lse_all, lse_same) against all keys; query i is key offset + i.

    ``query_sq`` / ``key_sq`` are the squared norms for the Euclidean distance,
    None for the cosine distance (unit rows).  ``temperature`` is a 0-dim tensor
    in the accumulation dtype on the points' device.
    """
    n_queries, dim = queries.shape
    block_m, block_n, block_d = blocks or choose_blocks(max(n_queries, keys.shape[0]), dim)
    acc_dtype = _accumulation_dtype(queries)
    lse_all = torch.empty(n_queries, dtype=acc_dtype, device=queries.device)
    lse_same = torch.empty_like(lse_all)
    euclidean = query_sq is not None
    _forward_kernel[(triton.cdiv(n_queries, block_m),)](
        queries, keys, query_labels, key_labels,
        query_sq if euclidean else lse_all, key_sq if euclidean else lse_all,
        temperature, lse_all, lse_same, n_queries, keys.shape[0], offset, dim, queries.stride(0), keys.stride(0),
        EUCLIDEAN=euclidean, FP64=acc_dtype == torch.float64, IEEE=not _half(queries),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )
    return lse_all, lse_same


def backward_pass(rows, cols, row_labels, col_labels, row_sq, col_sq, temperature, row_stats, col_stats,
                  row_offset, col_offset, *, blocks=None, num_warps=4):
    """One backward pass (see the module docstring).

    ``row_stats`` / ``col_stats``: (lse_all, lse_same with finite stand-ins,
    g_all, g_same) for the side whose loss terms are wanted, or None.
    Returns (sum_j H_ij c_j, sum_j H_ij, sum_j dl_i/ds_ij s_ij or None).
    """
    n_rows, dim = rows.shape
    block_m, block_n, block_d = blocks or choose_blocks(max(n_rows, cols.shape[0]), dim)
    acc_dtype = _accumulation_dtype(rows)
    in_registers = dim <= block_d
    grad = (torch.empty if in_registers else torch.zeros)((n_rows, dim), dtype=acc_dtype, device=rows.device)
    h_sum = torch.empty(n_rows, dtype=acc_dtype, device=rows.device)
    weighted = torch.empty_like(h_sum) if row_stats is not None else h_sum
    euclidean = row_sq is not None
    dummy = (h_sum,) * 4
    half = _half(rows)
    _backward_kernel[(triton.cdiv(n_rows, block_m),)](
        rows, cols, row_labels, col_labels, row_sq if euclidean else h_sum, col_sq if euclidean else h_sum,
        temperature, *(row_stats or dummy), *(col_stats or dummy), grad, h_sum, weighted,
        n_rows, cols.shape[0], row_offset, col_offset, dim, rows.stride(0), cols.stride(0), grad.stride(0),
        OWN_TERM=row_stats is not None, THEIR_TERM=col_stats is not None,
        EUCLIDEAN=euclidean, FP64=acc_dtype == torch.float64, IEEE=not half, IEEE_GRAD=not half,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        ACCUMULATE_IN_REGISTERS=in_registers, num_warps=num_warps,
    )
    return grad, h_sum, weighted if row_stats is not None else None
