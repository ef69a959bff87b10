"""The tiles every pair kernel is made of: ``@triton.jit`` helpers.

A row tile of queries is loaded once per program; every loop over key tiles
starts from ``_key_logits`` (the key tile, its logits s * log2(e), which pairs
count), so that the forward, backward and exact passes compute each logit
the same way.  The products: ``_dots`` (one product at a precision, or
3xTF32 from operands split in memory beforehand, ``_dot3``), and
``_split_tf32`` for the split in registers.  See ``pair_kernels`` for the
kernels and their algebra.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(s) = exp2(s * LOG2E)


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
def _row_tile(
    base,
    lo_base,
    row_ok,
    dim,
    stride,
    WHOLE_D: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
def _key_logits(
    KEYS,
    KEYS_LO,
    KEY_SQ,
    KEY_LABELS,
    c0,
    stop,
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
    key_stride,
    EUCLIDEAN: tl.constexpr,
    FP64: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
    WHOLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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
    dots = _dots(
        rows_base,
        rows_lo_base,
        base,
        lo_base,
        row_hi,
        row_lo,
        col_hi,
        col_lo,
        row_ok,
        col_ok,
        dim,
        row_stride,
        key_stride,
        WHOLE_D,
        SPLIT,
        FP64,
        PRECISION,
        BLOCK_M,
        BLOCK_N,
        BLOCK_D,
    )
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
def _dots(
    ROWS_BASE,
    ROWS_LO_BASE,
    COLS_BASE,
    COLS_LO_BASE,
    row_hi,
    row_lo,
    col_hi,
    col_lo,
    row_ok,
    col_ok,
    dim,
    row_stride,
    col_stride,
    WHOLE_D: tl.constexpr,
    SPLIT: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """<x_i, x_j> of a row tile and a key tile.  WHOLE_D: the tiles (and with
    SPLIT their lo parts) were loaded by the caller; otherwise the features
    are read here in BLOCK_D chunks.  SPLIT: 3xTF32 on operands split in
    memory beforehand (x = hi + lo); else one product at PRECISION."""
    if WHOLE_D:
        if SPLIT:
            return _dot3(
                row_hi, row_lo, tl.trans(col_hi), tl.trans(col_lo), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            )
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
