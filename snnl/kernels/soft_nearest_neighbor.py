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

Every choice of the compiled code is named here: ``TileConfig`` (tiles,
warps, stages), ``candidate_configs`` (what autotuning tries, per shape
bucket), ``plan_splits`` (the split of the key range) and ``PRECISIONS``.
``snnl.kernels.lab`` compiles every launch for real GPU targets without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

PRECISIONS = ("tf32x3", "tf32", "ieee")
LOG2E = tl.constexpr(1.4426950408889634)  # exp(s) = exp2(s * LOG2E)
# programs wanted per launch: an H100 has 132 streaming multiprocessors
TARGET_PROGRAMS = 132


# --------------------------------------------------------------------------- kernels


@triton.jit
def _scaled_logits(dots, sq_rows, sq_cols, scale, EUCLIDEAN: tl.constexpr):
    """s * log2(e) from the dot products (exp2 of it is exp(s)), and the mask of
    Euclidean distances that were not clamped at 0."""
    if EUCLIDEAN:
        raw = sq_rows[:, None] + sq_cols[None, :] - 2.0 * dots
        return -tl.maximum(raw, 0.0) * scale, raw >= 0.0
    return dots * scale - scale, dots == dots  # cosine: (<x_i, x_j> - 1) / T; no clamp


@triton.jit
def _tile(BASE, ok, dim, stride, k0, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK rows x BLOCK_D features from feature k0 on (zero rows where not
    ``ok``).  The points are padded with zeros to a multiple of BLOCK_D
    features (``operands``): no feature mask, aligned rows."""
    ks = k0 + tl.arange(0, BLOCK_D)
    return tl.load(BASE + tl.arange(0, BLOCK)[:, None] * stride + ks[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _row_tile(base, lo_base, row_ok, dim, stride, WHOLE_D: tl.constexpr, SPLIT: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The row tile (hi and, with SPLIT, lo parts), loaded once before the loop
    over key tiles when the features fit one chunk (else placeholders:
    ``_dots`` loads the chunks)."""
    row_hi = tl.arange(0, BLOCK_M)
    row_lo = row_hi
    if WHOLE_D:
        row_hi = _tile(base, row_ok, dim, stride, 0, BLOCK_M, BLOCK_D)
        if SPLIT:
            row_lo = _tile(lo_base, row_ok, dim, stride, 0, BLOCK_M, BLOCK_D)
    return row_hi, row_lo


@triton.jit
def _key_logits(KEYS, KEYS_LO, KEY_SQ, KEY_LABELS, c0, stop, rows_base, rows_lo_base, row_hi, row_lo, row_ok, sq_rows,
                self_shift, scale, dim, row_stride, key_stride,
                EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                WHOLE_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One key tile, from key c0 on, against the row tile: which of its keys
    exist (below ``stop``), its base pointers (hi, lo) and, when the features
    fit one chunk, the tile itself (``_dots``), s * log2(e) and the mask of
    unclamped distances (``_scaled_logits``), the keys' labels, and ``keep``:
    the pairs of existing keys other than the row itself (key = row +
    ``self_shift``'s offset).  Every loop over key tiles starts here."""
    cols_local = tl.arange(0, BLOCK_N)
    col_ok = cols_local < stop - c0
    base = KEYS + tl.cast(c0, tl.int64) * key_stride
    lo_base = KEYS_LO + tl.cast(c0, tl.int64) * key_stride
    col_hi = cols_local
    col_lo = cols_local
    if WHOLE_D:
        col_hi = _tile(base, col_ok, dim, key_stride, 0, BLOCK_N, BLOCK_D)
        if SPLIT:
            col_lo = _tile(lo_base, col_ok, dim, key_stride, 0, BLOCK_N, BLOCK_D)
    dots = _dots(rows_base, rows_lo_base, base, lo_base, row_hi, row_lo, col_hi, col_lo, row_ok, col_ok, dim,
                 row_stride, key_stride, WHOLE_D, SPLIT, FP64, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
    sq_cols = cols_local
    if EUCLIDEAN:
        sq_cols = tl.load(KEY_SQ + c0 + cols_local, mask=col_ok, other=0.0)
    s2, unclamped = _scaled_logits(dots, sq_rows, sq_cols, scale, EUCLIDEAN)
    labels = tl.load(KEY_LABELS + c0 + cols_local, mask=col_ok, other=0)
    keep = col_ok[None, :] & (self_shift[:, None] != (c0 + cols_local)[None, :])
    return col_ok, base, lo_base, col_hi, col_lo, s2, unclamped, labels, keep


@triton.jit
def _exact_terms(EXACT, index, ok, n, s2, keep, same, AXIS: tl.constexpr):
    """The far rows' exact terms of a tile of pairs, for the rows along
    ``AXIS`` (1: the tile's rows, 0: its columns): see ``_backward_kernel``."""
    e_all = tl.load(EXACT + index, mask=ok, other=0.0)
    e_same = tl.load(EXACT + n + index, mask=ok, other=0.0)
    l_all = tl.load(EXACT + 2 * n + index, mask=ok, other=0.0)
    l_same = tl.load(EXACT + 3 * n + index, mask=ok, other=0.0)
    if AXIS == 1:
        e_all, e_same, l_all, l_same = e_all[:, None], e_same[:, None], l_all[:, None], l_same[:, None]
    else:
        e_all, e_same, l_all, l_same = e_all[None, :], e_same[None, :], l_all[None, :], l_same[None, :]
    # selected, not multiplied: 2^(s2 - L) overflows for the pairs masked out
    terms = tl.where(keep & (e_all != 0.0), e_all * tl.exp2(s2 - l_all), 0.0)
    return terms + tl.where(keep & same & (e_same != 0.0), e_same * tl.exp2(s2 - l_same), 0.0)


@triton.jit
def _split_tf32(x):
    """x = hi + lo with hi exact in TF32 (rounded to nearest, ties away, as
    cvt.rna.tf32.f32 does) and lo the rest: the registers' side of 3xTF32."""
    hi = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _dot3(a_hi, a_lo, b_hi, b_lo, acc):
    """acc + a @ b in three TF32 products (3xTF32), the small terms first; the
    lo x lo term, 2^-22 of the product, is left out."""
    acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
    acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@triton.jit
def _dots(ROWS_BASE, ROWS_LO_BASE, COLS_BASE, COLS_LO_BASE, row_hi, row_lo, col_hi, col_lo, row_ok, col_ok, dim,
          row_stride, col_stride, WHOLE_D: tl.constexpr, SPLIT: tl.constexpr, FP64: tl.constexpr,
          PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """<x_i, x_j> of a row tile and a key tile.  WHOLE_D: the tiles (and with
    SPLIT their lo parts) were loaded by the caller; otherwise the features
    are read here in BLOCK_D chunks.  SPLIT: 3xTF32 on operands split in
    memory beforehand (x = hi + lo); else one product at PRECISION."""
    if WHOLE_D:
        if SPLIT:
            return _dot3(row_hi, row_lo, tl.trans(col_hi), tl.trans(col_lo),
                         tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
        return tl.dot(row_hi, tl.trans(col_hi), input_precision=PRECISION)
    if FP64:
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        dots = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_D):
        a = _tile(ROWS_BASE, row_ok, dim, row_stride, k0, BLOCK_M, BLOCK_D)
        b = _tile(COLS_BASE, col_ok, dim, col_stride, k0, BLOCK_N, BLOCK_D)
        if SPLIT:
            a_lo = _tile(ROWS_LO_BASE, row_ok, dim, row_stride, k0, BLOCK_M, BLOCK_D)
            b_lo = _tile(COLS_LO_BASE, col_ok, dim, col_stride, k0, BLOCK_N, BLOCK_D)
            dots = _dot3(a, a_lo, tl.trans(b), tl.trans(b_lo), dots)
        else:
            dots += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    return dots


@triton.jit
def _forward_kernel(
    Q, Q_LO, K, K_LO, Q_LABELS, K_LABELS, Q_SQ, K_SQ, TEMPERATURE, SUMS,
    n_queries, n_keys, offset, dim, q_stride, k_stride, keys_per_split,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    WHOLE_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
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
            K, K_LO, K_SQ, K_LABELS, c0, key_stop, q_base, q_lo_base, row_hi, row_lo, row_ok, sq_rows, self_shift,
            scale, dim, q_stride, k_stride, EUCLIDEAN, FP64, SPLIT, PRECISION, WHOLE_D, BLOCK_M, BLOCK_N, BLOCK_D)
        w = tl.where(keep, tl.exp2(s2), 0.0)
        sum_all += tl.sum(w, axis=1)
        sum_same += tl.sum(tl.where(row_labels[:, None] == col_labels[None, :], w, 0.0), axis=1)
    out = SUMS + split.to(tl.int64) * 2 * n_queries + row0 + rows_local
    tl.store(out, sum_all, mask=row_ok)
    tl.store(out + n_queries, sum_same, mask=row_ok)


@triton.jit
def _backward_kernel(
    ROWS, ROWS_LO, COLS, COLS_LO, ROW_LABELS, COL_LABELS, ROW_SQ, COL_SQ, TEMPERATURE,
    ROW_A, ROW_C, COL_A, COL_C, ROW_EXACT, COL_EXACT, ANY_FAR, GRAD, HSUM, WEIGHTED,
    n_rows, n_cols, self_delta, dim, row_stride, col_stride, cols_per_split,
    OWN_TERM: tl.constexpr, THEIR_TERM: tl.constexpr, NEED_WEIGHTED: tl.constexpr,
    EUCLIDEAN: tl.constexpr, FP64: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
    GRAD_SPLIT: tl.constexpr, WHOLE_D: tl.constexpr, FAR_PASS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
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
            COLS, COLS_LO, COL_SQ, COL_LABELS, c0, col_stop, rows_base, rows_lo_base, row_hi, row_lo, row_ok, sq_rows,
            self_shift, scale, dim, row_stride, col_stride, EUCLIDEAN, FP64, SPLIT, PRECISION, WHOLE_D, BLOCK_M,
            BLOCK_N, BLOCK_D)
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


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch options of one kernel configuration."""

    block_m: int
    block_n: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 2
    # ptxas' register budget per thread.  Without it, Triton 3.9's ptxas for
    # sm_80 gives these kernels 32 registers and spills tens of KB per thread.
    maxnreg: int | None = 255


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def feature_block(dim: int, dtype: torch.dtype) -> int:
    """The feature chunk: the whole dimension, padded to a power of two (tl.dot
    wants every side >= 16), up to 128 (64 for fp64, whose tiles take twice
    the shared memory); larger dimensions are looped over in 64-wide chunks,
    which leave registers for the chunked path's accumulators (128-wide
    chunks spill there: tests/test_compiled_code.py)."""
    whole = max(16, triton.next_power_of_2(dim))
    return whole if whole <= (64 if dtype == torch.float64 else 128) else 64


def candidate_configs(kind: str, n: int, dim: int, dtype: torch.dtype, capability: int = 90,
                      euclidean: bool = False) -> list[TileConfig]:
    """What autotuning tries for a launch (``kind``: "forward" or "backward") on
    a GPU of compute ``capability`` (80: A100, 90: H100), per bucket of
    (b, d); the first is the one used without a GPU to time them (the
    interpreter).  Each was chosen from the compiled code of every
    configuration tried (``snnl.kernels.lab``; tests/test_compiled_code.py
    keeps it so): none spills in fp32 or bf16, all fit in shared memory, and
    no warp computes another's exponentials (a tile of at least 16 x 8 pairs
    per warp: smaller tiles make Triton replicate the elementwise work).

    - 32 x 64 tiles with 8 warps compile clean everywhere; the backward pass
      (three products per pair) and the chunked path (d > 128) keep to them
      and to the other clean shape of each.
    - on sm_90, 64- and 128-row forward tiles use warpgroup MMAs and read
      each key tile from L2 for more rows (large batches); so does a 64 x 16
      backward tile with one warpgroup for the cosine distance (the Euclidean
      backward's extra per-row terms make it spill 40 B).
    - fp64 gets small tiles and two stages so that its tiles fit in shared
      memory at every size (the A100 allows 163 KiB per block).
    """
    block_d = feature_block(dim, dtype)
    if dtype == torch.float64:
        return [TileConfig(32, 32, block_d, 4, 2)]
    if dim > block_d:  # the features looped over in chunks
        return [TileConfig(32, 64, block_d, 8, 1)] + ([TileConfig(64, 32, block_d, 8, 1)] if capability >= 90 else [])
    if kind == "backward":
        warpgroup = [TileConfig(64, 16, block_d, 4, 1)] if capability >= 90 and not euclidean else []
        return warpgroup + [TileConfig(32, 64, block_d, 8, 1), TileConfig(32, 32, block_d, 4, 2)]
    if capability >= 90:
        large = [TileConfig(128, 64, block_d, 8, 1), TileConfig(128, 32, block_d, 8, 1)] if n > 4096 else []
        return large + [TileConfig(64, 32, block_d, 8, 1), TileConfig(32, 64, block_d, 8, 1)]
    # (64 x 32 with 4 warps spills 4 B for the Euclidean distance on sm_80,
    # whose extra per-row terms and int64 labels take the last registers)
    wide = [] if euclidean else [TileConfig(64, 32, block_d, 4, 2)]
    return [TileConfig(32, 64, block_d, 8, 1), *wide, TileConfig(64, 16, block_d, 4, 2)]


def far_pass_config(dim: int, dtype: torch.dtype) -> TileConfig:
    """The tiles of the backward far pass (``FAR_PASS``: up to four exp2 and
    four per-row vectors per pair, in batches with far rows only): 16 x 32
    with 4 warps compiles without spills for fp32 and bf16 on sm_80 and
    sm_90, where the pair kernels' 32-row tiles spill (tests/test_compiled_code.py)."""
    if dtype == torch.float64:
        return candidate_configs("backward", 0, dim, dtype)[0]
    return TileConfig(16, 32, feature_block(dim, dtype), 4, 1)


def device_capability(device: torch.device) -> int:
    """The GPU's compute capability as 80, 90, ... (90 for CPU tensors under the interpreter)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def shape_bucket(n: int, dim: int) -> tuple[int, int]:
    """Autotuning key: batch and feature sizes rounded up to powers of two."""
    return triton.next_power_of_2(n), triton.next_power_of_2(dim)


def plan_splits(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Parts of the key range: at least enough programs to fill the GPU
    (TARGET_PROGRAMS) where there are key tiles to share out, each part a
    whole number of key tiles."""
    return triton.cdiv(n_cols, _part_length(n_rows, n_cols, config))


def _part_length(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Keys per part of the key range (a multiple of BLOCK_N)."""
    wanted = triton.cdiv(TARGET_PROGRAMS, triton.cdiv(n_rows, config.block_m))
    key_tiles = triton.cdiv(n_cols, config.block_n)
    return max(1, key_tiles // wanted) * config.block_n


# --------------------------------------------------------------------------- launches


@dataclass
class Launch:
    """One kernel launch: what ``snnl.kernels.lab`` compiles and inspects."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict
    config: TileConfig

    def options(self) -> dict:
        """Compile options of the configuration (as triton.jit launch keywords)."""
        options = {"num_warps": self.config.num_warps, "num_stages": self.config.num_stages}
        if self.config.maxnreg is not None and not interpreted():
            options["maxnreg"] = self.config.maxnreg
        return options

    def run(self):
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options())


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
        raise ValueError(f"operands of {a.shape[1]} and {b.shape[1]} features for feature chunks of "
                         f"{config.block_d}: make them with snnl.kernels.rows.operands(x, precision, "
                         f"block_d={config.block_d})")


def forward_launch(queries, keys, query_labels, key_labels, query_sq, key_sq, temperature, offset, *,
                   config: TileConfig, precision: str = "tf32x3", splits: int | None = None) -> tuple[Launch, torch.Tensor]:
    """The forward launch and its output buffer of partial sums (splits, 2, n_queries).
    ``queries`` and ``keys`` are (hi, lo) pairs from ``operands``."""
    (q, q_lo), (k, k_lo) = queries, keys
    _check_padding(q, k, config)
    n_queries, dim = q.shape
    n_keys = k.shape[0]
    part = (triton.cdiv(triton.cdiv(n_keys, splits), config.block_n) * config.block_n if splits
            else _part_length(n_queries, n_keys, config))
    splits = triton.cdiv(n_keys, part)
    sums = torch.empty((splits, 2, n_queries), dtype=_acc_dtype(q), device=q.device)
    euclidean = query_sq is not None
    products = _products(q, precision)
    products.pop("GRAD_SPLIT")
    launch = Launch(
        _forward_kernel, (triton.cdiv(n_queries, config.block_m), splits),
        (q, q_lo, k, k_lo, query_labels, key_labels, query_sq if euclidean else sums, key_sq if euclidean else sums,
         temperature, sums, n_queries, n_keys, offset, dim, q.stride(0), k.stride(0), part),
        dict(EUCLIDEAN=euclidean, FP64=q.dtype == torch.float64, **products, WHOLE_D=dim <= config.block_d,
             BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d),
        config,
    )
    return launch, sums


def backward_launch(rows, cols, row_labels, col_labels, row_sq, col_sq, temperature, row_coefs, col_coefs,
                    self_delta, need_weighted, *, config: TileConfig, precision: str = "tf32x3",
                    splits: int | None = None, any_far: torch.Tensor | None = None, far_pass: bool = False
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
    part = (triton.cdiv(triton.cdiv(n_cols, splits), config.block_n) * config.block_n if splits
            else _part_length(n_rows, n_cols, config))
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
        (r, r_lo, c, c_lo, row_labels, col_labels, row_sq if euclidean else dummy, col_sq if euclidean else dummy,
         temperature, *(row_coefs or (dummy, dummy, dummy))[:2], *(col_coefs or (dummy, dummy, dummy))[:2],
         row_coefs[2] if row_coefs else dummy, col_coefs[2] if col_coefs else dummy, any_far, grad, h_sum, weighted,
         n_rows, n_cols, self_delta, dim, r.stride(0), c.stride(0), part),
        dict(OWN_TERM=row_coefs is not None, THEIR_TERM=col_coefs is not None, NEED_WEIGHTED=need_weighted,
             EUCLIDEAN=euclidean, FP64=r.dtype == torch.float64, **_products(r, precision), WHOLE_D=whole,
             FAR_PASS=far_pass, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d),
        config,
    )
    return launch, (grad, h_sum, weighted)


# --------------------------------------------------------------------------- autotuning


_TUNED: dict = {}


def tuned_config(kind: str, n: int, dim: int, dtype: torch.dtype, precision: str, euclidean: bool, make_launch,
                 device: torch.device) -> TileConfig:
    """The fastest candidate configuration for a shape bucket, timed once per
    bucket on the GPU (``make_launch(config)`` builds a launch); the first
    candidate, pinned, under the interpreter."""
    capability = device_capability(device)
    candidates = candidate_configs(kind, n, dim, dtype, capability, euclidean)
    if interpreted() or len(candidates) == 1:
        return candidates[0]
    key = (kind, *shape_bucket(n, dim), dtype, precision, euclidean, capability)
    if key not in _TUNED:
        timings = []
        for config in candidates:
            launch = make_launch(config)
            try:
                timings.append((triton.testing.do_bench(launch.run, warmup=5, rep=20), config))
            except triton.runtime.errors.OutOfResources:
                continue
        _TUNED[key] = min(timings, key=lambda t: t[0])[1] if timings else candidates[0]
    return _TUNED[key]


def model_programs(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Programs of a tile launch (row tiles x key-range parts), for reports."""
    return triton.cdiv(n_rows, config.block_m) * plan_splits(n_rows, n_cols, config)
