"""Fused Triton kernels for the soft nearest neighbor loss.

The loss compares query rows with key rows; in the ordinary (square) case the
queries are the keys, and under torch.distributed a process's own rows are the
queries and the gathered global batch the keys.  Query i is key
``offset + i``, and that self pair is excluded.

One exponential per pair and pass.  The logits s = -d / T are <= 0 for both
distances, so w = exp(s) needs no running maximum: the forward pass sums w
(all pairs) and w [same class] per row with one exp2 per pair, and the
backward pass forms each pair's whole derivative from one exp2,

    H_ij = w_ij (a_i + [y_i = y_j] c_i)  +  w_ij (a_j + [y_i = y_j] c_j),
           the row's own term               the column's term (s is symmetric)

with a = g_all / S and c = g_same / N per row (computed by the caller).  Rows
whose sums underflow this shared scale ("far" rows: all neighbours more than
about 50 T away in fp32) are recomputed exactly on the GPU, with no host
synchronisation: their log-sum-exps by ``snnl.kernels.rows``'
finish_forward, their gradient terms by the backward kernel's FAR_PASS
variant (a launch whose loop has no trips when no row is far).

Work is split two ways: row tiles of BLOCK_M queries, and the key range cut
into ``splits`` contiguous parts, one program each, so that small batches
still fill the GPU; every program writes its own partial sums (forward) or
partial gradient rows (backward) to its own slot, and the caller adds the
parts in a fixed order: deterministic, no atomics.  The row tile is loaded
once, before the loop over key tiles, which is the loop Triton pipelines.
Feature dimensions above BLOCK_D are looped over in chunks; the backward pass
then gives each chunk of output features its own program (grid axis 2) that
recomputes the logits, instead of reading and writing gradient rows in global
memory for every key tile.

Products: fp32 inputs run on the tensor cores with ``precision`` "tf32x3"
(three TF32 products, about fp32 accuracy; the default), "tf32" (one, ~1e-3
relative) or "ieee" (fp32 FMA, no tensor cores).  fp16/bf16 inputs use the
tensor cores directly; the backward product H @ x runs in fp32 ("tf32x3")
so the gradient keeps fp32 accuracy.  fp64 uses fp64 arithmetic throughout.
Offsets inside a tile are int32 off an int64 base.

Every choice of the compiled code is named in ``configs`` (tiles, warps,
stages, candidates, the split of the key range); the tiles the kernels are
made of are ``tiles``; the precisions ``snnl.choices.PRECISIONS``.
``snnl.kernel_tools.lab`` compiles every launch for real GPU targets without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import Launch, TileConfig, _part_length
from .tiles import LOG2E, _dot3, _exact_terms, _key_logits, _row_tile, _split_tf32, _tile


@triton.jit
def _forward_kernel(
    Q,
    Q_LO,
    K,
    K_LO,
    Q_LABELS,
    K_LABELS,
    Q_SQ,
    K_SQ,
    TEMPERATURE,
    SUMS,
    n_queries,
    n_keys,
    offset,
    dim,
    q_stride,
    k_stride,
    keys_per_split,
    EUCLIDEAN: tl.constexpr,
    FP64: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
    WHOLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial sums over this program's key range: SUMS[split, 0, i] = sum_j w_ij,
    SUMS[split, 1, i] = sum_{same class} w_ij.  Labels are compared as given
    (any integer dtype)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    split = tl.program_id(1)
    rows_local = tl.arange(0, BLOCK_M)
    row_ok = rows_local < n_queries - row0
    q_base = Q + row0 * q_stride
    q_lo_base = Q_LO + row0 * q_stride
    temperature = tl.load(TEMPERATURE)
    scale = LOG2E / temperature
    row_labels = tl.load(Q_LABELS + row0 + rows_local, mask=row_ok, other=0)
    sq_rows = rows_local  # placeholders unless EUCLIDEAN / WHOLE_D / SPLIT
    if EUCLIDEAN:
        sq_rows = tl.load(Q_SQ + row0 + rows_local, mask=row_ok, other=0.0)
    row_hi, row_lo = _row_tile(q_base, q_lo_base, row_ok, dim, q_stride, WHOLE_D, SPLIT, BLOCK_M, BLOCK_D)
    if FP64:
        sum_all = tl.zeros((BLOCK_M,), tl.float64)
    else:
        sum_all = tl.zeros((BLOCK_M,), tl.float32)
    sum_same = sum_all
    key_start = split * keys_per_split
    key_stop = tl.minimum(key_start + keys_per_split, n_keys)
    # a key tile holds the self pair where key = query + offset
    self_shift = (row0 + offset).to(tl.int32) + rows_local
    for c0 in range(key_start, key_stop, BLOCK_N):
        _, _, _, _, _, s2, _, col_labels, keep = _key_logits(
            K,
            K_LO,
            K_SQ,
            K_LABELS,
            c0,
            key_stop,
            q_base,
            q_lo_base,
            row_hi,
            row_lo,
            row_ok,
            sq_rows,
            self_shift,
            scale,
            dim,
            q_stride,
            k_stride,
            EUCLIDEAN,
            FP64,
            SPLIT,
            PRECISION,
            WHOLE_D,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
        )
        w = tl.where(keep, tl.exp2(s2), 0.0)
        sum_all += tl.sum(w, axis=1)
        sum_same += tl.sum(tl.where(row_labels[:, None] == col_labels[None, :], w, 0.0), axis=1)
    out = SUMS + split.to(tl.int64) * 2 * n_queries + row0 + rows_local
    tl.store(out, sum_all, mask=row_ok)
    tl.store(out + n_queries, sum_same, mask=row_ok)


@triton.jit
def _backward_kernel(
    ROWS,
    ROWS_LO,
    COLS,
    COLS_LO,
    ROW_LABELS,
    COL_LABELS,
    ROW_SQ,
    COL_SQ,
    TEMPERATURE,
    ROW_A,
    ROW_C,
    COL_A,
    COL_C,
    ROW_EXACT,
    COL_EXACT,
    ANY_FAR,
    GRAD,
    HSUM,
    WEIGHTED,
    n_rows,
    n_cols,
    self_delta,
    dim,
    row_stride,
    col_stride,
    cols_per_split,
    OWN_TERM: tl.constexpr,
    THEIR_TERM: tl.constexpr,
    NEED_WEIGHTED: tl.constexpr,
    EUCLIDEAN: tl.constexpr,
    FP64: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
    GRAD_SPLIT: tl.constexpr,
    WHOLE_D: tl.constexpr,
    FAR_PASS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Partial backward sums over this program's column range:
    GRAD[split, i, chunk] = sum_j H_ij c_j (this program's chunk of features),
    HSUM[split, i] = sum_j H_ij, WEIGHTED[split, i] = sum_j own_ij * s_ij * log2(e).
    Row i and column j are the same point when row i + self_delta == j.
    GRAD_SPLIT: the product H @ c in 3xTF32 (H split in registers; c split in
    memory with SPLIT, exact in TF32 for half inputs).

    FAR_PASS: the far rows' terms instead.  Their terms are left out of the
    shared coefficients (a, c = 0) and computed in exact form, each with its
    own shift, from ROW_EXACT / COL_EXACT = (4, n): (e_all, e_same,
    lse_all log2(e), lse_same log2(e)), e = g for the far rows' parts, 0
    elsewhere:

        own_ij = e_all_i 2^(s2_ij - L_all_i) + [same] e_same_i 2^(s2_ij - L_same_i)

    A launch of its own (one part, written as zeros when ``ANY_FAR[0]`` is 0:
    its loop then has no trips), so that the common launch carries none of
    its code or registers, and no host synchronisation decides whether it runs."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    split = tl.program_id(1)
    chunk = tl.program_id(2)
    rows_local = tl.arange(0, BLOCK_M)
    cols_local = tl.arange(0, BLOCK_N)
    row_ok = rows_local < n_rows - row0
    rows_base = ROWS + row0 * row_stride
    rows_lo_base = ROWS_LO + row0 * row_stride
    temperature = tl.load(TEMPERATURE)
    scale = LOG2E / temperature
    row_labels = tl.load(ROW_LABELS + row0 + rows_local, mask=row_ok, other=0)
    sq_rows = rows_local  # placeholders unless EUCLIDEAN / OWN_TERM / WHOLE_D / SPLIT
    if EUCLIDEAN:
        sq_rows = tl.load(ROW_SQ + row0 + rows_local, mask=row_ok, other=0.0)
    row_a = rows_local
    row_c = rows_local
    if OWN_TERM:
        row_a = tl.load(ROW_A + row0 + rows_local, mask=row_ok, other=0.0)
        row_c = tl.load(ROW_C + row0 + rows_local, mask=row_ok, other=0.0)
    row_hi, row_lo = _row_tile(rows_base, rows_lo_base, row_ok, dim, row_stride, WHOLE_D, SPLIT, BLOCK_M, BLOCK_D)
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float64)
        h_sum = tl.zeros((BLOCK_M,), tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        h_sum = tl.zeros((BLOCK_M,), tl.float32)
    weighted = h_sum
    k0_out = chunk * BLOCK_D  # this program's output features
    col_start = split * cols_per_split
    col_stop = tl.minimum(col_start + cols_per_split, n_cols)
    if FAR_PASS:  # no trips without far rows
        col_stop = tl.where(tl.load(ANY_FAR) != 0, col_stop, col_start)
    self_shift = (row0 + self_delta).to(tl.int32) + rows_local
    for c0 in range(col_start, col_stop, BLOCK_N):
        col_ok, cols_base, cols_lo_base, col_hi, col_lo, s2, unclamped, col_labels, keep = _key_logits(
            COLS,
            COLS_LO,
            COL_SQ,
            COL_LABELS,
            c0,
            col_stop,
            rows_base,
            rows_lo_base,
            row_hi,
            row_lo,
            row_ok,
            sq_rows,
            self_shift,
            scale,
            dim,
            row_stride,
            col_stride,
            EUCLIDEAN,
            FP64,
            SPLIT,
            PRECISION,
            WHOLE_D,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
        )
        same = row_labels[:, None] == col_labels[None, :]
        h = tl.zeros_like(s2)
        if FAR_PASS:
            if OWN_TERM:
                own = _exact_terms(ROW_EXACT + row0, rows_local, row_ok, n_rows, s2, keep, same, 1)
                if NEED_WEIGHTED:
                    weighted += tl.sum(own * s2, axis=1)
                h += own
            if THEIR_TERM:
                h += _exact_terms(COL_EXACT + c0, cols_local, col_ok, n_cols, s2, keep, same, 0)
        else:
            w = tl.where(keep, tl.exp2(s2), 0.0)
            if OWN_TERM:
                own = w * (row_a[:, None] + tl.where(same, row_c[:, None], 0.0))
                if NEED_WEIGHTED:
                    weighted += tl.sum(own * s2, axis=1)
                h += own
            if THEIR_TERM:
                col_a = tl.load(COL_A + c0 + cols_local, mask=col_ok, other=0.0)
                col_c = tl.load(COL_C + c0 + cols_local, mask=col_ok, other=0.0)
                h += w * (col_a[None, :] + tl.where(same, col_c[None, :], 0.0))
        if EUCLIDEAN:
            h = tl.where(unclamped, h, 0.0)
            h_sum += tl.sum(h, axis=1)
        # the key tile of the logits is reused for H @ x where it holds all features
        if WHOLE_D:
            values = col_hi
            values_lo = col_lo
        else:
            values = _tile(cols_base, col_ok, dim, col_stride, k0_out, BLOCK_N, BLOCK_D)
            values_lo = values
            if SPLIT:
                values_lo = _tile(cols_lo_base, col_ok, dim, col_stride, k0_out, BLOCK_N, BLOCK_D)
        if FP64:
            acc += tl.dot(h, values, input_precision="ieee")
        elif GRAD_SPLIT:
            h_hi, h_lo = _split_tf32(h)
            if SPLIT:
                acc = _dot3(h_hi, h_lo, values, values_lo, acc)
            else:  # half inputs: exact in TF32, no lo part
                acc = tl.dot(h_lo, values.to(tl.float32), acc, input_precision="tf32")
                acc = tl.dot(h_hi, values.to(tl.float32), acc, input_precision="tf32")
        else:
            acc += tl.dot(h, values.to(tl.float32), input_precision=PRECISION)
    out_k = k0_out + tl.arange(0, BLOCK_D)
    grad = GRAD + (split.to(tl.int64) * n_rows + row0) * dim
    tl.store(grad + rows_local[:, None] * dim + out_k[None, :], acc, mask=row_ok[:, None])
    if chunk == 0:
        out = split.to(tl.int64) * n_rows + row0 + rows_local
        tl.store(HSUM + out, h_sum, mask=row_ok)
        tl.store(WEIGHTED + out, weighted, mask=row_ok)


# --------------------------------------------------------------------------- launches


def _float(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _products(x: torch.Tensor, precision: str) -> dict:
    """The constexprs that choose how the kernels multiply (see the module docstring)."""
    fp32 = x.dtype == torch.float32
    split = fp32 and precision == "tf32x3"
    return dict(
        SPLIT=split,
        PRECISION="ieee" if x.dtype == torch.float64 or (fp32 and precision == "ieee") else "tf32",
        GRAD_SPLIT=split or (_float(x) and precision != "ieee"),
    )


def _check_padding(a: torch.Tensor, b: torch.Tensor, config: TileConfig) -> None:
    # the kernels read features without masks: whole chunks must lie in the buffers
    if a.shape[1] != b.shape[1] or a.shape[1] % config.block_d:
        raise ValueError(
            f"operands of {a.shape[1]} and {b.shape[1]} features for feature chunks of "
            f"{config.block_d}: make them with snnl.kernels.rows.operands(x, precision, "
            f"block_d={config.block_d})"
        )


def forward_launch(
    queries,
    keys,
    query_labels,
    key_labels,
    query_sq,
    key_sq,
    temperature,
    offset,
    *,
    config: TileConfig,
    precision: str = "tf32x3",
    splits: int | None = None,
) -> tuple[Launch, torch.Tensor]:
    """The forward launch and its output buffer of partial sums (splits, 2, n_queries).
    ``queries`` and ``keys`` are (hi, lo) pairs from ``operands``."""
    (q, q_lo), (k, k_lo) = queries, keys
    _check_padding(q, k, config)
    n_queries, dim = q.shape
    n_keys = k.shape[0]
    part = (
        triton.cdiv(triton.cdiv(n_keys, splits), config.block_n) * config.block_n
        if splits
        else _part_length(n_queries, n_keys, config)
    )
    splits = triton.cdiv(n_keys, part)
    sums = torch.empty((splits, 2, n_queries), dtype=_acc_dtype(q), device=q.device)
    euclidean = query_sq is not None
    products = _products(q, precision)
    products.pop("GRAD_SPLIT")
    launch = Launch(
        _forward_kernel,
        (triton.cdiv(n_queries, config.block_m), splits),
        (
            q,
            q_lo,
            k,
            k_lo,
            query_labels,
            key_labels,
            query_sq if euclidean else sums,
            key_sq if euclidean else sums,
            temperature,
            sums,
            n_queries,
            n_keys,
            offset,
            dim,
            q.stride(0),
            k.stride(0),
            part,
        ),
        dict(
            EUCLIDEAN=euclidean,
            FP64=q.dtype == torch.float64,
            **products,
            WHOLE_D=dim <= config.block_d,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=config.block_d,
        ),
        config,
    )
    return launch, sums


def backward_launch(
    rows,
    cols,
    row_labels,
    col_labels,
    row_sq,
    col_sq,
    temperature,
    row_coefs,
    col_coefs,
    self_delta,
    need_weighted,
    *,
    config: TileConfig,
    precision: str = "tf32x3",
    splits: int | None = None,
    any_far: torch.Tensor | None = None,
    far_pass: bool = False,
) -> tuple[Launch, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One backward launch (see ``_backward_kernel``) and its output buffers
    (grad (splits, n, width), h_sum (splits, n), weighted (splits, n)).
    ``rows`` / ``cols``: (hi, lo) pairs from ``operands``; ``row_coefs`` /
    ``col_coefs``: (a, c, exact) for the side whose terms are wanted, or
    None, ``exact`` the far rows' (4, n) coefficients; ``any_far``: a (1,)
    int32 flag on the device, nonzero when some row is far (default: none);
    ``far_pass``: the launch of the far rows' terms (one part)."""
    (r, r_lo), (c, c_lo) = rows, cols
    _check_padding(r, c, config)
    n_rows, dim = r.shape
    n_cols = c.shape[0]
    if far_pass:
        splits = 1
    part = (
        triton.cdiv(triton.cdiv(n_cols, splits), config.block_n) * config.block_n
        if splits
        else _part_length(n_rows, n_cols, config)
    )
    splits = triton.cdiv(n_cols, part)
    acc = _acc_dtype(r)
    grad = torch.empty((splits, n_rows, dim), dtype=acc, device=r.device)
    h_sum = torch.empty((splits, n_rows), dtype=acc, device=r.device)
    weighted = torch.empty_like(h_sum)
    if any_far is None:
        any_far = torch.zeros(1, dtype=torch.int32, device=r.device)
    euclidean = row_sq is not None
    dummy = h_sum
    whole = dim <= config.block_d
    launch = Launch(
        _backward_kernel,
        (triton.cdiv(n_rows, config.block_m), splits, 1 if whole else triton.cdiv(dim, config.block_d)),
        (
            r,
            r_lo,
            c,
            c_lo,
            row_labels,
            col_labels,
            row_sq if euclidean else dummy,
            col_sq if euclidean else dummy,
            temperature,
            *(row_coefs or (dummy, dummy, dummy))[:2],
            *(col_coefs or (dummy, dummy, dummy))[:2],
            row_coefs[2] if row_coefs else dummy,
            col_coefs[2] if col_coefs else dummy,
            any_far,
            grad,
            h_sum,
            weighted,
            n_rows,
            n_cols,
            self_delta,
            dim,
            r.stride(0),
            c.stride(0),
            part,
        ),
        dict(
            OWN_TERM=row_coefs is not None,
            THEIR_TERM=col_coefs is not None,
            NEED_WEIGHTED=need_weighted,
            EUCLIDEAN=euclidean,
            FP64=r.dtype == torch.float64,
            **_products(r, precision),
            WHOLE_D=whole,
            FAR_PASS=far_pass,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=config.block_d,
        ),
        config,
    )
    return launch, (grad, h_sum, weighted)
