"""Fused Triton kernels for the soft nearest neighbor loss (FlashAttention style).

Forward: each program owns BLOCK_M rows and streams over column tiles, keeping
an online maximum and running sum for two log-sum-exps per row (all pairs and
same-class pairs, each with its own maximum so neither underflows at small
temperatures).  Only those two numbers per row leave the kernel.

Backward: each program again owns BLOCK_M rows and recomputes every tile from
the saved log-sum-exps.  Because the logits are symmetric (s_ij = s_ji), row i
receives both its own term dl_i/ds_ij and the transposed term dl_j/ds_ji; the
program recomputes the latter from row j's saved values rather than adding into
row j's gradient, so there are no atomics and the result is deterministic.  The
price is two more exponentials per pair.

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
    X, SQ, rows, cols, row_ok, col_ok, temperature, dim, stride,
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
        a = tl.load(X + rows[:, None] * stride + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(X + cols[:, None] * stride + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if IEEE:
            dots += tl.dot(a, tl.trans(b), input_precision="ieee")
        else:
            dots += tl.dot(a, tl.trans(b))
    if EUCLIDEAN:
        sq_rows = tl.load(SQ + rows, mask=row_ok, other=0.0)
        sq_cols = tl.load(SQ + cols, mask=col_ok, other=0.0)
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
    X, LABELS, SQ, TEMPERATURE, LSE_ALL, LSE_SAME, n, dim, stride,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    temperature = tl.load(TEMPERATURE)
    row_labels = tl.load(LABELS + rows, mask=row_ok, other=0)
    if FP64:
        max_all = tl.full((BLOCK_M,), float("-inf"), tl.float64)
        sum_all = tl.zeros((BLOCK_M,), tl.float64)
    else:
        max_all = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        sum_all = tl.zeros((BLOCK_M,), tl.float32)
    max_same = max_all
    sum_same = sum_all
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n
        logits, _ = _logits_tile(
            X, SQ, rows, cols, row_ok, col_ok, temperature, dim, stride,
            EUCLIDEAN, FP64, IEEE, BLOCK_M, BLOCK_N, BLOCK_D,
        )
        col_labels = tl.load(LABELS + cols, mask=col_ok, other=0)
        pair_ok = col_ok[None, :] & (rows[:, None] != cols[None, :])
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
    """d loss / d s for the pairs of a tile, given one side's per-row values
    (broadcast along rows or columns by the caller)."""
    # Mask before exp(): off-mask exponents may be huge and must not become inf.
    p_all = tl.exp(tl.where(pair_ok, logits - lse_all, float("-inf")))
    p_same = tl.exp(tl.where(same, logits - lse_same, float("-inf")))
    return g_all * p_all + g_same * p_same


@triton.jit
def _backward_kernel(
    X, LABELS, SQ, TEMPERATURE, LSE_ALL, LSE_SAME, G_ALL, G_SAME,
    GRAD_X, GRAD_S_ROW_SUM, WEIGHTED_LOGITS, n, dim, stride, stride_grad,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, IEEE: tl.constexpr, IEEE_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ACCUMULATE_IN_REGISTERS: tl.constexpr,
):
    """Writes GRAD_X[i] = sum_j H_ij x_j with H = grad_s + grad_s^T, the row sums
    of H (Euclidean distance) and sum_j grad_s_ij * s_ij (temperature gradient).

    ``LSE_SAME`` holds a finite stand-in where a row has no same-class
    neighbour (its ``G_SAME`` is 0), so exp() never meets -inf - (-inf).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    temperature = tl.load(TEMPERATURE)
    row_labels = tl.load(LABELS + rows, mask=row_ok, other=0)
    row_lse_all = tl.load(LSE_ALL + rows, mask=row_ok, other=0.0)
    row_lse_same = tl.load(LSE_SAME + rows, mask=row_ok, other=0.0)
    row_g_all = tl.load(G_ALL + rows, mask=row_ok, other=0.0)
    row_g_same = tl.load(G_SAME + rows, mask=row_ok, other=0.0)
    ks = tl.arange(0, BLOCK_D)
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float64)
        h_sum = tl.zeros((BLOCK_M,), tl.float64)
        weighted = tl.zeros((BLOCK_M,), tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        h_sum = tl.zeros((BLOCK_M,), tl.float32)
        weighted = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, n, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < n
        logits, unclamped = _logits_tile(
            X, SQ, rows, cols, row_ok, col_ok, temperature, dim, stride,
            EUCLIDEAN, FP64, IEEE, BLOCK_M, BLOCK_N, BLOCK_D,
        )
        col_labels = tl.load(LABELS + cols, mask=col_ok, other=0)
        pair_ok = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        same = pair_ok & (row_labels[:, None] == col_labels[None, :])
        grad_own = _grad_logits(
            logits, row_lse_all[:, None], row_lse_same[:, None],
            row_g_all[:, None], row_g_same[:, None], pair_ok, same,
        )
        col_lse_all = tl.load(LSE_ALL + cols, mask=col_ok, other=0.0)
        col_lse_same = tl.load(LSE_SAME + cols, mask=col_ok, other=0.0)
        col_g_all = tl.load(G_ALL + cols, mask=col_ok, other=0.0)
        col_g_same = tl.load(G_SAME + cols, mask=col_ok, other=0.0)
        grad_theirs = _grad_logits(
            logits, col_lse_all[None, :], col_lse_same[None, :],
            col_g_all[None, :], col_g_same[None, :], pair_ok, same,
        )
        weighted += tl.sum(grad_own * tl.where(pair_ok, logits, 0.0), axis=1)
        h = tl.where(unclamped, grad_own + grad_theirs, 0.0)
        h_sum += tl.sum(h, axis=1)
        if ACCUMULATE_IN_REGISTERS:  # the whole feature dimension fits in one chunk
            k_ok = ks < dim
            xc = tl.load(X + cols[:, None] * stride + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if IEEE_GRAD:
                acc += tl.dot(h, xc.to(h.dtype), input_precision="ieee")
            else:
                acc += tl.dot(h, xc.to(h.dtype))
        else:  # wide features: read-modify-write this program's own rows, chunk by chunk
            for k0 in range(0, dim, BLOCK_D):
                kk = k0 + ks
                k_ok = kk < dim
                xc = tl.load(X + cols[:, None] * stride + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if IEEE_GRAD:
                    part = tl.dot(h, xc.to(h.dtype), input_precision="ieee")
                else:
                    part = tl.dot(h, xc.to(h.dtype))
                out = GRAD_X + rows[:, None] * stride_grad + kk[None, :]
                out_ok = row_ok[:, None] & k_ok[None, :]
                tl.store(out, tl.load(out, mask=out_ok, other=0.0) + part, mask=out_ok)
    if ACCUMULATE_IN_REGISTERS:
        out_ok = row_ok[:, None] & (ks < dim)[None, :]
        tl.store(GRAD_X + rows[:, None] * stride_grad + ks[None, :], acc, mask=out_ok)
    tl.store(GRAD_S_ROW_SUM + rows, h_sum, mask=row_ok)
    tl.store(WEIGHTED_LOGITS + rows, weighted, mask=row_ok)


# --------------------------------------------------------------------------- launchers


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def choose_blocks(n: int, dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D) for a problem: the whole feature dimension in
    one chunk up to 128 (tl.dot wants every side >= 16), smaller row blocks for
    small batches so more programs run at once."""
    block_d = min(128, max(16, triton.next_power_of_2(dim)))
    block_m = 32 if n <= 16384 else 64
    return block_m, 64, block_d


def forward(x, labels, squared_norms, temperature, *, blocks=None, num_warps=4):
    """Per-row (lse_all, lse_same) of prepared points ``x`` (b x d, row-major).

    ``squared_norms`` is None for the cosine distance (x has unit rows).
    ``temperature`` is a 0-dim tensor in the accumulation dtype on x's device.
    """
    n, dim = x.shape
    block_m, block_n, block_d = blocks or choose_blocks(n, dim)
    acc_dtype = _accumulation_dtype(x)
    lse_all = torch.empty(n, dtype=acc_dtype, device=x.device)
    lse_same = torch.empty_like(lse_all)
    euclidean = squared_norms is not None
    _forward_kernel[(triton.cdiv(n, block_m),)](
        x, labels, squared_norms if euclidean else lse_all, temperature, lse_all, lse_same,
        n, dim, x.stride(0),
        EUCLIDEAN=euclidean, FP64=acc_dtype == torch.float64, IEEE=x.dtype != torch.float16 and x.dtype != torch.bfloat16,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )
    return lse_all, lse_same


def backward(x, labels, squared_norms, temperature, lse_all, lse_same, g_all, g_same, *, blocks=None, num_warps=4):
    """Returns (sum_j H_ij x_j, sum_j H_ij, sum_j grad_s_ij s_ij), all per row.

    ``lse_same`` must be finite (a stand-in where g_same is 0).
    """
    n, dim = x.shape
    block_m, block_n, block_d = blocks or choose_blocks(n, dim)
    acc_dtype = _accumulation_dtype(x)
    in_registers = dim <= block_d
    grad_x = (torch.empty if in_registers else torch.zeros)((n, dim), dtype=acc_dtype, device=x.device)
    h_sum = torch.empty(n, dtype=acc_dtype, device=x.device)
    weighted = torch.empty_like(h_sum)
    euclidean = squared_norms is not None
    half = x.dtype in (torch.float16, torch.bfloat16)
    _backward_kernel[(triton.cdiv(n, block_m),)](
        x, labels, squared_norms if euclidean else lse_all, temperature, lse_all, lse_same, g_all, g_same,
        grad_x, h_sum, weighted, n, dim, x.stride(0), grad_x.stride(0),
        EUCLIDEAN=euclidean, FP64=acc_dtype == torch.float64, IEEE=not half, IEEE_GRAD=not half,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        ACCUMULATE_IN_REGISTERS=in_registers, num_warps=num_warps,
    )
    return grad_x, h_sum, weighted
