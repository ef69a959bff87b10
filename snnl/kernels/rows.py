"""The O(b * d) kernels around the pair kernels (``pair_kernels``):
one launch each where torch would take several small operations and, for
the far rows, host synchronisations.

- ``prepare``: the points as the pair kernels read them, in one launch
  (``layout``): for the cosine distance the unit rows, normalised at any
  norm (each row divided by its largest entry first, so that neither the
  squares of 1e19 nor of 1e-30 leave the fp32 range; a row of zeros stays
  zeros); for the Euclidean distance the points less a centre shared by
  queries and keys (the distance is the same, and the expansion
  |x|^2 + |y|^2 - 2 <x, y> then loses nothing to an offset the points share);
  padded to whole feature chunks, split into (hi, lo) for 3xTF32; and per
  row its largest entry and scaled norm (cosine) or squared norm (Euclidean).
- ``finish_forward``: the key-range parts added in a fixed order, the
  per-row log-sum-exps and losses, and for the row tiles that hold a far row (a sum
  that underflowed the shared scale) an exact pass over all keys with the
  rows' own running maximum, inside the same launch.  Which tiles need it
  is decided on the GPU: no ``nonzero``, no synchronisation.  A log-sum-exp
  that is -inf after the exact pass although the row has keys (of its
  class) has only logits that overflowed: it is NaN, never a quiet 0.
- ``coefficients``: the backward kernels' per-row inputs from the rows'
  log-sum-exps and the upstream gradients (where torch took some forty
  small operations).
- ``finish_backward``: the parts of the backward launches added in a fixed
  order, turned into the gradient of the raw points (through the
  normalisation for the cosine distance, 0 for a row of zeros; the padding
  dropped, the input dtype), and each row's share of the temperature's
  gradient.

Every tile in this module is read with the pair kernels' own helpers
(``tiles``), so the exact pass computes the logits exactly as they do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .configs import Launch, TileConfig, feature_block
from .layout import Coefficients, Math, Parts, Side, planes
from .tiles import LOG2E, key_tile, logits, pair_masks, row_tile, split_tf32

LN2 = tl.constexpr(0.6931471805599453)
ROWS_PER_PROGRAM = 32  # prepare and finish_backward: 32 rows x up to 64 features per step
COEFFICIENT_ROWS = 256  # rows per program of the coefficients kernel (elementwise)


class Operands(NamedTuple):
    """What ``prepare`` makes of one side's points: ops (n, planes, width)
    (``layout``) and aux (2, n): (largest |entry|, norm of the row divided
    by it) for the cosine distance, (squared norm of the centred row, unused)
    for the Euclidean one."""

    ops: torch.Tensor
    aux: torch.Tensor


class Statistics(NamedTuple):
    """``finish_forward``'s outputs, each (n,): the per-row losses and the two log-sum-exps."""

    rows: torch.Tensor
    lse_all: torch.Tensor
    lse_same: torch.Tensor


class Backward(NamedTuple):
    """``coefficients``' outputs: the per-row inputs of the backward
    launches, and a (1,) int32 flag raised when some row is far."""

    coefficients: Coefficients
    any_far: torch.Tensor


# --------------------------------------------------------------------------- kernels


@triton.jit
def _prepare_kernel(
    X, CENTRE, OPS, AUX, n, dim, width, x_stride, x_col_stride,
    EUCLIDEAN: tl.constexpr, THREE_TF32: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):  # fmt: skip
    """OPS (n, planes, width) and AUX (2, n): see ``Operands``.  Cosine: y =
    (x / m) / |x / m| with m the row's largest |entry| (a row of zeros: y =
    0, m = 0); Euclidean: x - CENTRE.  Computed in ACC, then x's dtype."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    ok = rows < n - row0
    base = X + row0 * x_stride + rows[:, None] * x_stride
    largest = tl.zeros((BLOCK_R,), ACC)
    if not EUCLIDEAN:
        for k0 in range(0, dim, BLOCK_W):
            ks = k0 + tl.arange(0, BLOCK_W)
            x = tl.load(base + ks[None, :] * x_col_stride, mask=ok[:, None] & (ks < dim)[None, :], other=0.0)
            largest = tl.maximum(largest, tl.max(tl.abs(x.to(ACC)), axis=1))
    divisor = tl.where(largest > 0.0, largest, 1.0)
    squares = tl.zeros((BLOCK_R,), ACC)
    for k0 in range(0, dim, BLOCK_W):
        ks = k0 + tl.arange(0, BLOCK_W)
        mask = ok[:, None] & (ks < dim)[None, :]
        x = tl.load(base + ks[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
        if EUCLIDEAN:
            x = tl.where(mask, x - tl.load(CENTRE + ks, mask=ks < dim, other=0.0)[None, :], 0.0)
        else:
            x = x / divisor[:, None]
        squares += tl.sum(x * x, axis=1)
    norm = tl.sqrt(squares)
    stride = width
    if THREE_TF32:
        stride = 2 * width
    for k0 in range(0, width, BLOCK_W):
        ks = k0 + tl.arange(0, BLOCK_W)
        mask = ok[:, None] & (ks < dim)[None, :]
        x = tl.load(base + ks[None, :] * x_col_stride, mask=mask, other=0.0).to(ACC)
        if EUCLIDEAN:
            x = tl.where(mask, x - tl.load(CENTRE + ks, mask=ks < dim, other=0.0)[None, :], 0.0)
        else:
            x = x / divisor[:, None] / tl.where(norm > 0.0, norm, 1.0)[:, None]
        x = x.to(OPS.dtype.element_ty)
        out = OPS + row0 * stride + rows[:, None] * stride + ks[None, :]
        if THREE_TF32:
            hi, lo = split_tf32(x)
            tl.store(out, hi, mask=ok[:, None])
            tl.store(out + width, lo, mask=ok[:, None])
        else:
            tl.store(out, x, mask=ok[:, None])
    if EUCLIDEAN:
        tl.store(AUX + row0 + rows, squares, mask=ok)
    else:
        tl.store(AUX + row0 + rows, largest, mask=ok)
        tl.store(AUX + n + row0 + rows, norm, mask=ok)


@triton.jit
def _logaddexp(a, b):
    """log(e^a + e^b) for finite ``a`` and any b <= +inf, with log1p's
    accuracy (Goldberg's log1p: log(w) u / (w - 1), w = 1 + u)."""
    top = tl.maximum(a, b)
    u = tl.exp(-tl.abs(a - b))
    w = 1.0 + u
    return top + tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))


@triton.jit
def _exact_loop(
    Q, rows, K, scale, floor,
    M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The rows' log-sum-exps over all keys (all, same class) with their own
    running maxima, in base 2 (an online log-sum-exp); ``floor``: where the
    maxima start, the lowest finite value (a row with no key of its class
    rescales by 2^0, never by 2^(-inf + inf))."""
    max_all = floor
    max_same = floor
    sum_all = tl.zeros_like(floor)
    sum_same = sum_all
    for c0 in range(0, K.n, BLOCK_N):
        keys = key_tile(K, c0, K.n, M, BLOCK_N, BLOCK_D)
        s2, _ = logits(Q, rows, K, c0, keys, scale, M, BLOCK_M, BLOCK_N, BLOCK_D)
        keep, same = pair_masks(rows, K, c0, keys[2], BLOCK_N)
        same = keep & same
        new_all = tl.maximum(max_all, tl.max(tl.where(keep, s2, floor[:, None]), axis=1))
        sum_all = sum_all * tl.exp2(max_all - new_all) + tl.sum(
            tl.where(keep, tl.exp2(s2 - new_all[:, None]), 0.0), axis=1
        )
        max_all = new_all
        new_same = tl.maximum(max_same, tl.max(tl.where(same, s2, floor[:, None]), axis=1))
        sum_same = sum_same * tl.exp2(max_same - new_same) + tl.sum(
            tl.where(same, tl.exp2(s2 - new_same[:, None]), 0.0), axis=1
        )
        max_same = new_same
    lse_all = tl.where(sum_all > 0.0, (max_all + tl.log2(sum_all)) * LN2, float("-inf"))
    lse_same = tl.where(sum_same > 0.0, (max_same + tl.log2(sum_same)) * LN2, float("-inf"))
    return lse_all, lse_same


@triton.jit
def _has_same(labels, self_key, K, BLOCK_N: tl.constexpr):
    """Whether each row (its ``labels``, the key index of its self pair) has
    a key of its class other than itself: a scan of the keys' labels."""
    found = self_key != self_key
    for c0 in range(0, K.n, BLOCK_N):
        index = c0 + tl.arange(0, BLOCK_N)
        ok = index < K.n
        key_labels = tl.load(K.labels + index, mask=ok, other=0)
        same = ok[None, :] & (self_key[:, None] != index[None, :]) & (labels[:, None] == key_labels[None, :])
        found = found | (tl.max(same.to(tl.int32), axis=1) > 0)
    return found


@triton.jit
def _finish_forward_kernel(
    Q, K, TEMPERATURE, SUMS, OUT, offset, parts, far, log_eps,
    EPS_ZERO: tl.constexpr, M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """OUT (``Statistics``): lse_all = log S_i, lse_same = log N_i from SUMS
    (parts, 2, n) (see ``pair_kernels``), added part after part, and the rows'
    losses.  A row is far when log S_i < -far, or log N_i < -far, or N_i
    underflowed to 0 although the row has same-class keys (looked up in the
    labels for the tiles with an N_i = 0 only); a tile with a far row
    recomputes its far rows over all keys, each with its own running maximum."""
    first = tl.program_id(0).to(tl.int64) * BLOCK_M
    index = tl.arange(0, BLOCK_M)
    ok = index < Q.n - first
    self_key = (first + offset).to(tl.int32) + index
    sum_all = tl.zeros((BLOCK_M,), M.ACC)
    sum_same = sum_all
    for part in range(parts):  # a fixed order: the same rounding for every row
        at = SUMS + tl.cast(part, tl.int64) * 2 * Q.n + first + index
        sum_all += tl.load(at, mask=ok, other=0.0)
        sum_same += tl.load(at + Q.n, mask=ok, other=0.0)
    has_same = sum_same > 0.0
    if tl.max((ok & ~has_same).to(tl.int32), axis=0) > 0:  # singletons, or an underflow
        labels = tl.load(Q.labels + first + index, mask=ok, other=0)
        has_same = has_same | _has_same(labels, self_key, K, BLOCK_N)
    lse_all = tl.where(sum_all > 0.0, tl.log(sum_all), float("-inf"))
    lse_same = tl.where(sum_same > 0.0, tl.log(sum_same), tl.where(has_same, -2.0 * far, float("-inf")))
    is_far = ok & ((lse_all < -far) | (has_same & (lse_same < -far)))
    if tl.max(is_far.to(tl.int32), axis=0) > 0:
        if M.ACC == tl.float64:
            floor = tl.full((BLOCK_M,), -1.7976931348623157e308, tl.float64)
        else:
            floor = tl.full((BLOCK_M,), -3.4028234663852886e38, tl.float32)
        scale = LOG2E / tl.load(TEMPERATURE)
        rows = row_tile(Q, first, offset, M, BLOCK_M, BLOCK_D)
        exact_all, exact_same = _exact_loop(Q, rows, K, scale, floor, M, BLOCK_M, BLOCK_N, BLOCK_D)
        # -inf although there are keys (of the row's class): every logit overflowed
        others = K.n - ((self_key >= 0) & (self_key < K.n)).to(tl.int32)
        exact_all = tl.where((exact_all == float("-inf")) & (others > 0), float("nan"), exact_all)
        exact_same = tl.where((exact_same == float("-inf")) & has_same, float("nan"), exact_same)
        lse_all = tl.where(is_far, exact_all, lse_all)
        lse_same = tl.where(is_far, exact_same, lse_same)
    tl.store(OUT.lse_all + first + index, lse_all, mask=ok)
    tl.store(OUT.lse_same + first + index, lse_same, mask=ok)
    has_same = lse_same > float("-inf")
    if EPS_ZERO:  # lse_all - lse_same, +inf without a same-class neighbour
        loss = tl.where(has_same, lse_all - tl.where(has_same, lse_same, 0.0), float("inf"))
    else:  # -log(eps + N / (eps + S))
        loss = -_logaddexp(log_eps, lse_same - _logaddexp(log_eps, lse_all))
    tl.store(OUT.rows + first + index, loss, mask=ok)


@triton.jit
def _gradient_chunk(
    PARTS, FAR, X, CENTRE, row0, rows, ok, k0, n, dim, width, x_stride, parts,
    EUCLIDEAN: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """Features k0 .. k0 + BLOCK_W of the rows' sum_j H_ij x_j, the parts
    added in a fixed order (the shared-exp launch's, then the far pass's),
    the same features of x (less the centre: Euclidean), and their indices and mask."""
    ks = k0 + tl.arange(0, BLOCK_W)
    mask = ok[:, None] & (ks < dim)[None, :]
    at = row0 * width + rows[:, None] * width + ks[None, :]
    raw = tl.zeros((BLOCK_R, BLOCK_W), ACC)
    for part in range(parts):
        raw += tl.load(PARTS.grad + tl.cast(part, tl.int64) * n * width + at, mask=mask, other=0.0)
    raw += tl.load(FAR.grad + at, mask=mask, other=0.0)
    x = tl.load(X + row0 * x_stride + rows[:, None] * x_stride + ks[None, :], mask=mask, other=0.0).to(ACC)
    if EUCLIDEAN:
        x = x - tl.load(CENTRE + ks, mask=ks < dim, other=0.0)[None, :]
    return raw, x, ks, mask


@triton.jit
def _finish_backward_kernel(
    PARTS, FAR, X, CENTRE, AUX, TEMPERATURE, OUT, T_SHARE, n, dim, width, x_stride, parts,
    EUCLIDEAN: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """OUT (n, dim) in x's dtype: the gradient of the raw points x (cosine:
    through the normalisation, from AUX's largest entry and scaled norm;
    Euclidean: of the centred points, the same) from sum_j H_ij x_j and sum_j
    H_ij (PARTS, ``layout.Parts``), added part after part (the shared-exp
    launch's parts, then the far pass's one, FAR); T_SHARE (n): row i's share
    of dl/dT, -ln 2 / T times its sum_j own_ij s_ij log2(e)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    ok = rows < n - row0
    temperature = tl.load(TEMPERATURE)
    h_sum = tl.zeros((BLOCK_R,), ACC)
    weighted = h_sum
    for part in range(parts):
        at = tl.cast(part, tl.int64) * n + row0 + rows
        h_sum += tl.load(PARTS.hsum + at, mask=ok, other=0.0)
        weighted += tl.load(PARTS.weighted + at, mask=ok, other=0.0)
    h_sum += tl.load(FAR.hsum + row0 + rows, mask=ok, other=0.0)
    weighted += tl.load(FAR.weighted + row0 + rows, mask=ok, other=0.0)
    tl.store(T_SHARE + row0 + rows, weighted * (-LN2 / temperature), mask=ok)
    largest = h_sum
    norm = h_sum
    radial = h_sum
    zero = ok != ok
    if not EUCLIDEAN:  # <y, g> with g = raw / T, for the normalisation's backward
        largest = tl.load(AUX + row0 + rows, mask=ok, other=1.0)
        norm = tl.load(AUX + n + row0 + rows, mask=ok, other=1.0)
        zero = largest == 0.0  # a row of zeros: no direction, no gradient
        largest = tl.where(zero, 1.0, largest)
        norm = tl.where(norm > 0.0, norm, 1.0)
        radial = tl.zeros_like(h_sum)
        for k0 in range(0, dim, BLOCK_W):
            raw, x, _, _ = _gradient_chunk(
                PARTS,
                FAR,
                X,
                CENTRE,
                row0,
                rows,
                ok,
                k0,
                n,
                dim,
                width,
                x_stride,
                parts,
                EUCLIDEAN,
                ACC,
                BLOCK_R,
                BLOCK_W,
            )
            radial += tl.sum(x / largest[:, None] / norm[:, None] * (raw / temperature), axis=1)
    for k0 in range(0, dim, BLOCK_W):
        raw, x, ks, mask = _gradient_chunk(
            PARTS, FAR, X, CENTRE, row0, rows, ok, k0, n, dim, width, x_stride, parts, EUCLIDEAN, ACC, BLOCK_R, BLOCK_W
        )
        if EUCLIDEAN:  # s_ij = -|x_i - x_j|^2 / T
            grad = -2.0 * (h_sum[:, None] * x - raw) / temperature
        else:  # s_ij = (<y_i, y_j> - 1) / T, y = x / |x|: (I - y y^T) g / |x|, 0 for a row of zeros
            y = x / largest[:, None] / norm[:, None]
            grad = (raw / temperature - y * radial[:, None]) / norm[:, None] / largest[:, None]
            grad = tl.where(zero[:, None], 0.0, grad)
        tl.store(OUT + row0 * dim + rows[:, None] * dim + ks[None, :], grad.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _coefficients_kernel(
    LSE_ALL, LSE_SAME, UPSTREAM, OUT, ANY_FAR, n, far, log_eps,
    EPS_ZERO: tl.constexpr, LSE_GRADS: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """The backward kernels' per-row inputs (OUT, ``layout.Coefficients``)
    from the rows' log-sum-exps and the upstream gradients (UPSTREAM,
    ``snnl.loss.options.Upstream``: of the losses, and with LSE_GRADS of the
    log-sum-exps too): a = g_all / S and c = g_same / N for the shared-exp
    terms (0 for far rows and rows without a same-class key), exact (4, n) =
    (e_all, e_same, lse_all log2(e), lse_same log2(e)) for the far rows'
    exact terms (0 elsewhere), and ANY_FAR[0] raised to 1 when some row is
    far (``snnl.loss.rowwise.log_sum_gradients`` and
    ``snnl.loss.backends.blocked.far.shared_coefficients``, in one launch)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < n
    lse_all = tl.load(LSE_ALL + rows, mask=ok, other=0.0)
    lse_same = tl.load(LSE_SAME + rows, mask=ok, other=float("-inf"))
    g = tl.load(UPSTREAM.rows + rows, mask=ok, other=0.0).to(lse_all.dtype)
    has_same = lse_same > float("-inf")
    if EPS_ZERO:
        g_all = tl.where(has_same, g, 0.0)
        g_same = tl.where(has_same, -g, 0.0)
    else:
        # p: the share of the outer log's argument that is not eps; q: of the inner one's
        log_ratio = lse_same - _logaddexp(tl.zeros_like(lse_all) + log_eps, lse_all)
        p = tl.where(has_same, _sigmoid(log_ratio - log_eps), 0.0)
        q = _sigmoid(lse_all - log_eps)
        g_all = g * p * q
        g_same = -g * p
    if LSE_GRADS:
        g_all += tl.load(UPSTREAM.lse_all + rows, mask=ok, other=0.0).to(lse_all.dtype)
        g_same += tl.where(has_same, tl.load(UPSTREAM.lse_same + rows, mask=ok, other=0.0).to(lse_all.dtype), 0.0)
    far_all = lse_all < -far
    far_same = (has_same & (lse_same < -far)) | far_all
    shared_same = has_same & (far_same == 0)
    tl.store(OUT.a + rows, tl.where(far_all, 0.0, g_all * tl.exp(-tl.where(far_all, 0.0, lse_all))), mask=ok)
    same_coef = tl.where(shared_same, g_same * tl.exp(-tl.where(shared_same, lse_same, 0.0)), 0.0)
    tl.store(OUT.c + rows, same_coef, mask=ok)
    exact_same = far_same & has_same
    tl.store(OUT.exact + rows, tl.where(far_all, g_all, 0.0), mask=ok)
    tl.store(OUT.exact + n + rows, tl.where(exact_same, g_same, 0.0), mask=ok)
    tl.store(OUT.exact + 2 * n + rows, tl.where(far_all, lse_all, 0.0) * LOG2E, mask=ok)
    tl.store(OUT.exact + 3 * n + rows, tl.where(exact_same, lse_same, 0.0) * LOG2E, mask=ok)
    tl.atomic_max(ANY_FAR, tl.max(tl.where(ok & far_same, 1, 0), axis=0))  # a flag: the same whatever the order


# --------------------------------------------------------------------------- launches


def _step(width: int) -> int:
    """Features per step of the row kernels: 64, or the whole (padded) width below it."""
    return min(64, triton.next_power_of_2(width))


def _row_config() -> TileConfig:
    return TileConfig(ROWS_PER_PROGRAM, 16, 16, 4, 1)


def prepare_launch(
    x: torch.Tensor, centre: torch.Tensor, *, precision: str, euclidean: bool, block_d: int | None = None
) -> tuple[Launch, Operands]:
    """The launch that makes the pair kernels' operands from the points ``x``
    (n, d) and its outputs (``Operands``): the unit rows (cosine) or the rows
    less ``centre`` (Euclidean, (d,) in the accumulation dtype), padded to a
    multiple of ``block_d`` features (default ``feature_block``, what every
    candidate configuration uses; the padding adds 0 to every product and
    receives 0 gradient), split for 3xTF32 (fp32, "tf32x3")."""
    n, dim = x.shape
    block_d = block_d or feature_block(dim, x.dtype)
    width = -(-dim // block_d) * block_d
    three = planes(x.dtype, precision) == 2
    ops = torch.empty((n, planes(x.dtype, precision), width), dtype=x.dtype, device=x.device)
    aux = torch.empty((2, n), dtype=centre.dtype, device=x.device)
    launch = Launch(
        _prepare_kernel,
        grid=(triton.cdiv(n, ROWS_PER_PROGRAM),),
        args=dict(
            X=x,
            CENTRE=centre,
            OPS=ops,
            AUX=aux,
            n=n,
            dim=dim,
            width=width,
            x_stride=x.stride(0),
            x_col_stride=x.stride(1),
        ),  # fmt: skip
        constexprs=dict(
            EUCLIDEAN=euclidean,
            THREE_TF32=three,
            ACC=tl.float64 if centre.dtype == torch.float64 else tl.float32,
            BLOCK_R=ROWS_PER_PROGRAM,
            BLOCK_W=_step(width),
        ),
        config=_row_config(),
    )
    return launch, Operands(ops, aux)


def side(operands: Operands, labels: torch.Tensor, euclidean: bool) -> Side:
    """The pair kernels' view of one side (``layout.Side``)."""
    ops, aux = operands
    return Side(ops, aux[0] if euclidean else aux[1], labels, ops.shape[0], ops.shape[2])


def _chunk_of(width: int, dtype: torch.dtype) -> int:
    """The feature chunk that divides operands of ``width`` (padded) features:
    the largest power of two dividing it, at most 128 (64 for fp64 and for
    chunked widths, as ``feature_block``)."""
    cap = 64 if dtype == torch.float64 or width > 128 else 128
    return min(width & -width, cap)


def exact_config(block_d: int, dtype: torch.dtype) -> TileConfig:
    """The tiles of ``finish_forward``'s exact pass: the pair kernels'
    shapes that compile clean everywhere (``candidate_configs``)."""
    if dtype == torch.float64:
        return TileConfig(32, 32, block_d, 4, 2)
    return TileConfig(32, 64, block_d, 8, 1)


def finish_forward_launch(
    queries: Side, keys: Side, temperature, offset: int, sums: torch.Tensor, *, far: float, eps: float, math: Math
) -> tuple[Launch, Statistics]:
    """The launch that turns the forward parts ``sums`` into the rows' losses
    and log-sum-exps (exact for far rows), and its outputs (``Statistics``)."""
    config = exact_config(_chunk_of(queries.width, queries.ops.dtype), queries.ops.dtype)
    out = Statistics(*(torch.empty(queries.n, dtype=sums.dtype, device=sums.device) for _ in range(3)))
    launch = Launch(
        _finish_forward_kernel,
        grid=(triton.cdiv(queries.n, config.block_m),),
        args=dict(
            Q=queries,
            K=keys,
            TEMPERATURE=temperature,
            SUMS=sums,
            OUT=out,
            offset=offset,
            parts=sums.shape[0],
            far=far,
            log_eps=math_log(eps),
        ),
        constexprs=dict(
            EPS_ZERO=eps == 0,
            M=math._replace(WHOLE_D=queries.width <= config.block_d),
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=config.block_d,
        ),
        config=config,
    )
    return launch, out


def math_log(eps: float) -> float:
    """log(eps) for the kernels (0 stands in for eps = 0, which they treat apart)."""
    return math.log(eps) if eps > 0 else 0.0


def finish_backward_launch(
    parts: Parts, far_parts: Parts, x: torch.Tensor, centre: torch.Tensor, aux: torch.Tensor, temperature, *,
    euclidean: bool,
) -> tuple[Launch, tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """The launch that adds the backward parts, the shared-exp launch's and
    the far pass's, into the gradient of the raw points ``x`` (n, d), in x's
    dtype, and each row's share of dl/dT; and those two outputs."""
    n_parts, n, width = parts.grad.shape
    dim = x.shape[1]
    out = torch.empty((n, dim), dtype=x.dtype, device=x.device)
    t_share = torch.empty(n, dtype=parts.grad.dtype, device=x.device)
    x = x if x.stride(1) == 1 else x.contiguous()
    launch = Launch(
        _finish_backward_kernel,
        grid=(triton.cdiv(n, ROWS_PER_PROGRAM),),
        args=dict(
            PARTS=parts,
            FAR=far_parts,
            X=x,
            CENTRE=centre,
            AUX=aux,
            TEMPERATURE=temperature,
            OUT=out,
            T_SHARE=t_share,
            n=n,
            dim=dim,
            width=width,
            x_stride=x.stride(0),
            parts=n_parts,
        ),  # fmt: skip
        constexprs=dict(
            EUCLIDEAN=euclidean,
            ACC=tl.float64 if parts.grad.dtype == torch.float64 else tl.float32,
            BLOCK_R=ROWS_PER_PROGRAM,
            BLOCK_W=_step(dim),
        ),
        config=_row_config(),
    )
    return launch, (out, t_share)


def coefficients_launch(
    lse_all: torch.Tensor, lse_same: torch.Tensor, upstream, *, eps: float, far: float
) -> tuple[Launch, Backward]:
    """The launch of the backward kernels' per-row inputs (``_coefficients_kernel``)
    from the upstream gradients (``snnl.loss.options.Upstream``; both
    gradients of the log-sum-exps or neither), and its outputs (``Backward``)."""
    n = lse_all.shape[0]
    out = Coefficients(
        torch.empty_like(lse_all),
        torch.empty_like(lse_all),
        torch.empty((4, n), dtype=lse_all.dtype, device=lse_all.device),
    )
    any_far = torch.zeros(1, dtype=torch.int32, device=lse_all.device)
    lse_grads = upstream.lse_all is not None
    launch = Launch(
        _coefficients_kernel,
        grid=(triton.cdiv(n, COEFFICIENT_ROWS),),
        args=dict(
            LSE_ALL=lse_all,
            LSE_SAME=lse_same,
            # unread stand-ins where the log-sum-exps have no gradient
            UPSTREAM=upstream if lse_grads else upstream._replace(lse_all=upstream.rows, lse_same=upstream.rows),
            OUT=out,
            ANY_FAR=any_far,
            n=n,
            far=far,
            log_eps=math_log(eps),
        ),
        constexprs=dict(EPS_ZERO=eps == 0, LSE_GRADS=lse_grads, BLOCK_R=COEFFICIENT_ROWS),
        config=TileConfig(COEFFICIENT_ROWS, 16, 16, 4, 1),
    )
    return launch, Backward(out, any_far)
