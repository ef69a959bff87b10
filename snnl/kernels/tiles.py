"""The tiles every pair kernel is made of: ``@triton.jit`` helpers.

A row tile is loaded once per program (``row_tile``); every loop over key
tiles loads a key tile (``key_tile``), computes its logits s * log2(e)
(``logits``) and which pairs count (``pair_masks``), so that the forward,
backward and exact passes compute each logit the same way.  The products:
one at a precision, or 3xTF32 from operands split in memory beforehand
(``dot3``), and ``split_tf32`` for the split in registers.  A row tile is the
tuple (hi, lo, sq, labels, ok, self_key, first); a key tile (hi, lo, ok): its
squared norms and labels are read where they are needed, after the product,
so that they hold no registers across it.  ``M`` is the ``layout.Math`` record.  See ``pair_kernels`` for
the kernels and their algebra, ``layout`` for the operands.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # exp(s) = exp2(s * LOG2E)


@triton.jit
def chunk(S, first, ok, k0, plane, M: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK rows of side ``S`` from row ``first`` on, features k0 .. k0 +
    BLOCK_D of ``plane`` (0: hi, 1: lo), zero rows where not ``ok``.  The
    operands are padded to whole chunks (``layout``): no feature mask."""
    stride = S.width
    if M.THREE_TF32:
        stride = 2 * S.width
    base = S.ops + first * stride + plane * S.width
    ks = k0 + tl.arange(0, BLOCK_D)
    return tl.load(base + tl.arange(0, BLOCK)[:, None] * stride + ks[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _points(S, first, ok, M: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """(hi, lo): the whole feature chunk when the features fit one (else
    placeholders: ``logits`` reads the chunks as it goes)."""
    hi = tl.arange(0, BLOCK)
    lo = hi
    if M.WHOLE_D:
        hi = chunk(S, first, ok, 0, 0, M, BLOCK, BLOCK_D)
        if M.THREE_TF32:
            lo = chunk(S, first, ok, 0, 1, M, BLOCK, BLOCK_D)
    return hi, lo


@triton.jit
def row_tile(S, first, offset, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """The rows ``first`` .. ``first`` + BLOCK_M of side ``S``: (hi, lo, sq,
    labels, ok, self_key, first), ``self_key`` the key index of each row's
    self pair (row + ``offset``)."""
    index = tl.arange(0, BLOCK_M)
    ok = index < S.n - first
    labels = tl.load(S.labels + first + index, mask=ok, other=0)
    sq = index  # a placeholder unless Euclidean
    if M.EUCLIDEAN:
        sq = tl.load(S.sq + first + index, mask=ok, other=0.0)
    hi, lo = _points(S, first, ok, M, BLOCK_M, BLOCK_D)
    return hi, lo, sq, labels, ok, (first + offset).to(tl.int32) + index, first


@triton.jit
def key_tile(S, c0, stop, M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The keys c0 .. c0 + BLOCK_N (those below ``stop``) of side ``S``: (hi, lo, ok)."""
    ok = tl.arange(0, BLOCK_N) < stop - c0
    hi, lo = _points(S, tl.cast(c0, tl.int64), ok, M, BLOCK_N, BLOCK_D)
    return hi, lo, ok


@triton.jit
def split_tf32(x):
    """x = hi + lo with hi exact in TF32 (rounded to nearest, ties away, as
    cvt.rna.tf32.f32 does) and lo the rest: the registers' side of 3xTF32."""
    hi = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def dot3(a_hi, a_lo, b_hi, b_lo, acc):
    """acc + a @ b in three TF32 products (3xTF32), the small terms first; the
    lo x lo term, 2^-22 of the product, is left out."""
    acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
    acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
    return tl.dot(a_hi, b_hi, acc, input_precision="tf32")


@triton.jit
def _dots(Q, rows, K, c0, keys, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """<x_i, x_j> of the row tile and the key tile: from the tiles loaded
    already (WHOLE_D), else chunk by chunk; 3xTF32 on split operands, else
    one product at M.PRECISION."""
    r_hi, r_lo, _, _, r_ok, _, first = rows
    k_hi, k_lo, k_ok = keys
    if M.WHOLE_D:
        if M.THREE_TF32:
            return dot3(r_hi, r_lo, tl.trans(k_hi), tl.trans(k_lo), tl.zeros((BLOCK_M, BLOCK_N), tl.float32))
        return tl.dot(r_hi, tl.trans(k_hi), input_precision=M.PRECISION)
    dots = tl.zeros((BLOCK_M, BLOCK_N), M.ACC)
    for k0 in range(0, Q.width, BLOCK_D):
        a = chunk(Q, first, r_ok, k0, 0, M, BLOCK_M, BLOCK_D)
        b = chunk(K, tl.cast(c0, tl.int64), k_ok, k0, 0, M, BLOCK_N, BLOCK_D)
        if M.THREE_TF32:
            a_lo = chunk(Q, first, r_ok, k0, 1, M, BLOCK_M, BLOCK_D)
            b_lo = chunk(K, tl.cast(c0, tl.int64), k_ok, k0, 1, M, BLOCK_N, BLOCK_D)
            dots = dot3(a, a_lo, tl.trans(b), tl.trans(b_lo), dots)
        else:
            dots += tl.dot(a, tl.trans(b), input_precision=M.PRECISION)
    return dots


@triton.jit
def logits(
    Q, rows, K, c0, keys, scale, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """s * log2(e) of the row tile against the key tile from c0 (exp2 of it
    is exp(s)), and the mask of the Euclidean distances that were not clamped
    at 0 (the clamp passes no gradient; all true for the cosine distance).
    ``scale`` = log2(e) / T."""
    dots = _dots(Q, rows, K, c0, keys, M, BLOCK_M, BLOCK_N, BLOCK_D)
    if M.EUCLIDEAN:  # of centred points: |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 <x_i, x_j>
        sq = tl.load(K.sq + c0 + tl.arange(0, BLOCK_N), mask=keys[2], other=0.0)
        raw = rows[2][:, None] + sq[None, :] - 2.0 * dots
        return -tl.maximum(raw, 0.0) * scale, raw >= 0.0
    return dots * scale - scale, dots == dots  # cosine of unit rows: (<x_i, x_j> - 1) / T


@triton.jit
def pair_masks(rows, K, c0, keys_ok, BLOCK_N: tl.constexpr):
    """(keep, same): the pairs of existing keys (``keys_ok``) other than the
    row itself, and those of the same class."""
    index = c0 + tl.arange(0, BLOCK_N)
    keep = keys_ok[None, :] & (rows[5][:, None] != index[None, :])
    labels = tl.load(K.labels + index, mask=keys_ok, other=0)
    return keep, rows[3][:, None] == labels[None, :]


@triton.jit
def exact_terms(EXACT, index, ok, n, s2, keep, same, AXIS: tl.constexpr):
    """The far rows' exact terms of a tile of pairs, for the rows along
    ``AXIS`` (1: the tile's rows, 0: its columns): see ``pair_kernels``.
    EXACT (4, n) = (e_all, e_same, lse_all log2(e), lse_same log2(e))."""
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
