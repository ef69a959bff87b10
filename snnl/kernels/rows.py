"""The O(b * d) kernels around the pair kernels (``pair_kernels``):
one launch each where torch would take several small operations and, for
the far rows, host synchronisations.

- ``prepare``: the points as the pair kernels read them, in one launch:
  normalised (cosine distance, as ``F.normalize``), padded to whole feature
  chunks, split into (hi, lo) for 3xTF32, and their norms (cosine) or
  squared norms (Euclidean).
- ``finish_forward``: the key-range parts added in a fixed order, the
  per-row log-sum-exps and losses, and for the row tiles that hold a far row (a sum
  that underflowed the shared scale) an exact pass over all keys with the
  rows' own running maximum, inside the same launch.  Which tiles need it
  is decided on the GPU: no ``nonzero``, no synchronisation.
- ``coefficients``: the backward kernels' per-row inputs from the rows'
  log-sum-exps and the upstream gradient (where torch took some forty small
  operations).
- ``finish_backward``: the parts of the backward launches added in a fixed
  order, turned into the gradient of the raw points (through the
  normalisation for the cosine distance; the padding dropped, the input
  dtype), and each row's share of the temperature's gradient.

The row tiles of ``finish_forward``'s exact pass are those of
``exact_config``; every tile in this module is read with the pair kernels'
own helpers, so the exact pass computes the logits exactly as they do.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import NORM_EPS as _NORM_EPS
from .configs import Launch, TileConfig, feature_block
from .pair_kernels import _acc_dtype, _check_padding, _products
from .tiles import LOG2E, _key_logits, _row_tile, _split_tf32

LN2 = tl.constexpr(0.6931471805599453)
ROWS_PER_PROGRAM = 32  # prepare and finish_backward: 32 rows x up to 64 features per step
# the running maxima of the exact pass start here rather than at -inf, so that
# a tile with no key of a row's class rescales by 2^0, never by 2^(-inf + inf)
_FLOOR = tl.constexpr(-1.0e30)
NORM_EPS = tl.constexpr(_NORM_EPS)  # F.normalize's floor on the norm, as every backend


# --------------------------------------------------------------------------- kernels


@triton.jit
def _prepare_kernel(
    X,
    HI,
    LO,
    AUX,
    n,
    dim,
    width,
    x_stride,
    x_col_stride,
    SPLIT: tl.constexpr,
    COSINE: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """HI, LO (n, width): the points padded with zero features, split for
    3xTF32 when SPLIT (else HI only); the points are x / max(|x|, NORM_EPS)
    for the cosine distance (as ``F.normalize``, in the accumulation dtype,
    then x's), else x.  AUX (n, accumulation dtype): |x| floored at NORM_EPS
    (cosine: the backward pass divides by it), else |x|^2 (Euclidean)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    ok = rows < n - row0
    if FP64:
        aux = tl.zeros((BLOCK_R,), tl.float64)
    else:
        aux = tl.zeros((BLOCK_R,), tl.float32)
    base = X + row0 * x_stride + rows[:, None] * x_stride
    for k0 in range(0, dim, BLOCK_W):  # squared norms
        ks = k0 + tl.arange(0, BLOCK_W)
        x = tl.load(base + ks[None, :] * x_col_stride, mask=ok[:, None] & (ks < dim)[None, :], other=0.0)
        wide = x.to(aux.dtype)
        aux += tl.sum(wide * wide, axis=1)
    if COSINE:
        aux = tl.maximum(tl.sqrt(aux), NORM_EPS)
    for k0 in range(0, width, BLOCK_W):
        ks = k0 + tl.arange(0, BLOCK_W)
        x = tl.load(base + ks[None, :] * x_col_stride, mask=ok[:, None] & (ks < dim)[None, :], other=0.0)
        if COSINE:
            x = (x.to(aux.dtype) / aux[:, None]).to(x.dtype)
        out = row0 * width + rows[:, None] * width + ks[None, :]
        if SPLIT:
            hi, lo = _split_tf32(x)
            tl.store(HI + out, hi, mask=ok[:, None])
            tl.store(LO + out, lo, mask=ok[:, None])
        else:
            tl.store(HI + out, x, mask=ok[:, None])
    tl.store(AUX + row0 + rows, aux, mask=ok)


@triton.jit
def _logaddexp(a, b):
    """log(e^a + e^b) for finite ``a`` and any b <= +inf, with log1p's
    accuracy (Goldberg's log1p: log(w) u / (w - 1), w = 1 + u)."""
    top = tl.maximum(a, b)
    u = tl.exp(-tl.abs(a - b))
    w = 1.0 + u
    return top + tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))


@triton.jit
def _finish_forward_kernel(
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
    LSE_ALL,
    LSE_SAME,
    LOSS,
    n_queries,
    n_keys,
    offset,
    dim,
    q_stride,
    k_stride,
    splits,
    far,
    log_eps,
    EPS_ZERO: tl.constexpr,
    EUCLIDEAN: tl.constexpr,
    FP64: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,
    WHOLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """LSE_ALL = log S_i, LSE_SAME = log N_i (n_queries each) from SUMS (splits, 2, n_queries)
    (see ``_forward_kernel``), added part after part.  A row is far when
    log S_i < -far, or log N_i < -far, or N_i underflowed to 0 although the
    row has same-class keys (then log N_i reads -2 far; whether it has any is
    looked up in the labels for the tiles with an N_i = 0 only); a tile with
    a far row recomputes its far rows over all keys, each with its own
    running maximum."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_M
    rows_local = tl.arange(0, BLOCK_M)
    row_ok = rows_local < n_queries - row0
    if FP64:
        sum_all = tl.zeros((BLOCK_M,), tl.float64)
    else:
        sum_all = tl.zeros((BLOCK_M,), tl.float32)
    sum_same = sum_all
    for part in range(splits):  # a fixed order: the same rounding for every row
        at = SUMS + tl.cast(part, tl.int64) * 2 * n_queries + row0 + rows_local
        sum_all += tl.load(at, mask=row_ok, other=0.0)
        sum_same += tl.load(at + n_queries, mask=row_ok, other=0.0)
    row_labels = tl.load(Q_LABELS + row0 + rows_local, mask=row_ok, other=0)
    cols_local = tl.arange(0, BLOCK_N)
    self_shift = (row0 + offset).to(tl.int32) + rows_local
    has_same = sum_same > 0.0
    if tl.max((row_ok & ~has_same).to(tl.int32), axis=0) > 0:  # singletons, or an underflow
        for c0 in range(0, n_keys, BLOCK_N):
            col_ok = cols_local < n_keys - c0
            col_labels = tl.load(K_LABELS + c0 + cols_local, mask=col_ok, other=0)
            same = (
                col_ok[None, :]
                & (self_shift[:, None] != (c0 + cols_local)[None, :])
                & (row_labels[:, None] == col_labels[None, :])
            )
            has_same = has_same | (tl.max(same.to(tl.int32), axis=1) > 0)
    lse_all = tl.where(sum_all > 0.0, tl.log(sum_all), float("-inf"))
    lse_same = tl.where(sum_same > 0.0, tl.log(sum_same), tl.where(has_same, -2.0 * far, float("-inf")))
    is_far = row_ok & ((lse_all < -far) | (has_same & (lse_same < -far)))
    if tl.max(is_far.to(tl.int32), axis=0) > 0:
        q_base = Q + row0 * q_stride
        q_lo_base = Q_LO + row0 * q_stride
        scale = LOG2E / tl.load(TEMPERATURE)
        sq_rows = rows_local
        if EUCLIDEAN:
            sq_rows = tl.load(Q_SQ + row0 + rows_local, mask=row_ok, other=0.0)
        row_hi, row_lo = _row_tile(q_base, q_lo_base, row_ok, dim, q_stride, WHOLE_D, SPLIT, BLOCK_M, BLOCK_D)
        max_all = tl.full((BLOCK_M,), _FLOOR, sum_all.dtype)
        max_same = max_all
        exact_all = tl.zeros_like(sum_all)
        exact_same = exact_all
        for c0 in range(0, n_keys, BLOCK_N):  # online log-sum-exp in base 2
            _, _, _, _, _, s2, _, col_labels, keep = _key_logits(
                K,
                K_LO,
                K_SQ,
                K_LABELS,
                c0,
                n_keys,
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
            same = keep & (row_labels[:, None] == col_labels[None, :])
            new_all = tl.maximum(max_all, tl.max(tl.where(keep, s2, _FLOOR), axis=1))
            exact_all = exact_all * tl.exp2(max_all - new_all) + tl.sum(
                tl.where(keep, tl.exp2(s2 - new_all[:, None]), 0.0), axis=1
            )
            max_all = new_all
            new_same = tl.maximum(max_same, tl.max(tl.where(same, s2, _FLOOR), axis=1))
            exact_same = exact_same * tl.exp2(max_same - new_same) + tl.sum(
                tl.where(same, tl.exp2(s2 - new_same[:, None]), 0.0), axis=1
            )
            max_same = new_same
        exact_lse_all = tl.where(exact_all > 0.0, (max_all + tl.log2(exact_all)) * LN2, float("-inf"))
        exact_lse_same = tl.where(exact_same > 0.0, (max_same + tl.log2(exact_same)) * LN2, float("-inf"))
        lse_all = tl.where(is_far, exact_lse_all, lse_all)
        lse_same = tl.where(is_far, exact_lse_same, lse_same)
    tl.store(LSE_ALL + row0 + rows_local, lse_all, mask=row_ok)
    tl.store(LSE_SAME + row0 + rows_local, lse_same, mask=row_ok)
    has_same = lse_same > float("-inf")
    if EPS_ZERO:  # lse_all - lse_same, +inf without a same-class neighbour
        loss = tl.where(has_same, lse_all - tl.where(has_same, lse_same, 0.0), float("inf"))
    else:  # -log(eps + N / (eps + S))
        loss = -_logaddexp(log_eps, lse_same - _logaddexp(log_eps, lse_all))
    tl.store(LOSS + row0 + rows_local, loss, mask=row_ok)


@triton.jit
def _gradient_chunk(
    GRAD,
    FAR_GRAD,
    X,
    row0,
    rows,
    ok,
    k0,
    n,
    dim,
    width,
    x_stride,
    splits,
    dtype: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """Features k0 .. k0 + BLOCK_W of the rows' sum_j H_ij c_j, the parts
    added in a fixed order (the shared-exp launch's, then the far pass's),
    the same features of x, and their indices and mask."""
    ks = k0 + tl.arange(0, BLOCK_W)
    mask = ok[:, None] & (ks < dim)[None, :]
    at = row0 * width + rows[:, None] * width + ks[None, :]
    raw = tl.zeros((BLOCK_R, BLOCK_W), dtype)
    for part in range(splits):
        raw += tl.load(GRAD + tl.cast(part, tl.int64) * n * width + at, mask=mask, other=0.0)
    raw += tl.load(FAR_GRAD + at, mask=mask, other=0.0)
    x = tl.load(X + row0 * x_stride + rows[:, None] * x_stride + ks[None, :], mask=mask, other=0.0).to(dtype)
    return raw, x, ks, mask


@triton.jit
def _finish_backward_kernel(
    GRAD,
    HSUM,
    WEIGHTED,
    FAR_GRAD,
    FAR_HSUM,
    FAR_WEIGHTED,
    X,
    NORM,
    TEMPERATURE,
    OUT,
    T_SHARE,
    n,
    dim,
    width,
    x_stride,
    splits,
    EUCLIDEAN: tl.constexpr,
    FP64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """OUT (n, dim) in x's dtype: the gradient of the raw points x (cosine:
    through the normalisation, NORM their floored norms) from
    sum_j H_ij c_j (GRAD (splits, n, width)) and sum_j H_ij (HSUM), added
    part after part (the shared-exp launch's parts, then the far pass's one,
    FAR_*);
    T_SHARE (n): row i's share of dl/dT, -ln 2 / T times its
    sum_j own_ij s_ij log2(e) (WEIGHTED)."""
    row0 = tl.program_id(0).to(tl.int64) * BLOCK_R
    rows = tl.arange(0, BLOCK_R)
    ok = rows < n - row0
    temperature = tl.load(TEMPERATURE)
    if FP64:
        h_sum = tl.zeros((BLOCK_R,), tl.float64)
    else:
        h_sum = tl.zeros((BLOCK_R,), tl.float32)
    weighted = h_sum
    for part in range(splits):
        at = tl.cast(part, tl.int64) * n + row0 + rows
        h_sum += tl.load(HSUM + at, mask=ok, other=0.0)
        weighted += tl.load(WEIGHTED + at, mask=ok, other=0.0)
    h_sum += tl.load(FAR_HSUM + row0 + rows, mask=ok, other=0.0)
    weighted += tl.load(FAR_WEIGHTED + row0 + rows, mask=ok, other=0.0)
    tl.store(T_SHARE + row0 + rows, weighted * (-LN2 / temperature), mask=ok)
    norm = h_sum
    radial = h_sum
    if not EUCLIDEAN:  # <y, g> with g = raw / T, for the normalisation's backward (0 where |x| was floored)
        norm = tl.load(NORM + row0 + rows, mask=ok, other=1.0)
        radial = tl.zeros_like(h_sum)
        for k0 in range(0, dim, BLOCK_W):
            raw, x, _, _ = _gradient_chunk(
                GRAD, FAR_GRAD, X, row0, rows, ok, k0, n, dim, width, x_stride, splits, h_sum.dtype, BLOCK_R, BLOCK_W
            )
            radial += tl.sum(x / norm[:, None] * (raw / temperature), axis=1)
        radial = tl.where(norm > NORM_EPS, radial, 0.0)
    for k0 in range(0, dim, BLOCK_W):
        raw, x, ks, mask = _gradient_chunk(
            GRAD, FAR_GRAD, X, row0, rows, ok, k0, n, dim, width, x_stride, splits, h_sum.dtype, BLOCK_R, BLOCK_W
        )
        if EUCLIDEAN:  # s_ij = -|x_i - c_j|^2 / T
            grad = -2.0 * (h_sum[:, None] * x - raw) / temperature
        else:  # s_ij = (<y_i, y_j> - 1) / T, y = x / |x|: through the normalisation
            y = x / norm[:, None]
            grad = (raw / temperature - y * radial[:, None]) / norm[:, None]
        tl.store(OUT + row0 * dim + rows[:, None] * dim + ks[None, :], grad.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _coefficients_kernel(
    LSE_ALL,
    LSE_SAME,
    GRAD_ROWS,
    GRAD_LSE_ALL,
    GRAD_LSE_SAME,
    COEF,
    SAME_COEF,
    EXACT,
    ANY_FAR,
    n,
    far,
    log_eps,
    EPS_ZERO: tl.constexpr,
    LSE_GRADS: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """The backward kernels' per-row inputs from the rows' log-sum-exps and
    the upstream gradients (of the losses; with LSE_GRADS also of the
    log-sum-exps themselves, ``snnl.loss.rowwise.log_sum_gradients``): COEF = g_all / S and SAME_COEF = g_same / N
    for the shared-exp terms (0 for far rows and rows without a same-class
    key), EXACT (4, n) = (e_all, e_same, lse_all log2(e), lse_same log2(e))
    for the far rows' exact terms (0 elsewhere), and ANY_FAR[0] raised to 1
    when some row is far (``snnl.loss.rowwise.row_coefficients`` and
    ``snnl.loss.backends.blocked.far.shared_coefficients``, in one launch)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < n
    lse_all = tl.load(LSE_ALL + rows, mask=ok, other=0.0)
    lse_same = tl.load(LSE_SAME + rows, mask=ok, other=float("-inf"))
    g = tl.load(GRAD_ROWS + rows, mask=ok, other=0.0).to(lse_all.dtype)
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
        g_all += tl.load(GRAD_LSE_ALL + rows, mask=ok, other=0.0).to(lse_all.dtype)
        g_same += tl.where(has_same, tl.load(GRAD_LSE_SAME + rows, mask=ok, other=0.0).to(lse_all.dtype), 0.0)
    far_all = lse_all < -far
    far_same = (has_same & (lse_same < -far)) | far_all
    shared_same = has_same & (far_same == 0)
    coef = tl.where(far_all, 0.0, g_all * tl.exp(-tl.where(far_all, 0.0, lse_all)))
    same_coef = tl.where(shared_same, g_same * tl.exp(-tl.where(shared_same, lse_same, 0.0)), 0.0)
    exact_same = far_same & has_same
    tl.store(COEF + rows, coef, mask=ok)
    tl.store(SAME_COEF + rows, same_coef, mask=ok)
    tl.store(EXACT + rows, tl.where(far_all, g_all, 0.0), mask=ok)
    tl.store(EXACT + n + rows, tl.where(exact_same, g_same, 0.0), mask=ok)
    tl.store(EXACT + 2 * n + rows, tl.where(far_all, lse_all, 0.0) * LOG2E, mask=ok)
    tl.store(EXACT + 3 * n + rows, tl.where(exact_same, lse_same, 0.0) * LOG2E, mask=ok)
    tl.atomic_max(ANY_FAR, tl.max(tl.where(ok & far_same, 1, 0), axis=0))  # a flag: the same whatever the order


# --------------------------------------------------------------------------- launches


def _step(width: int) -> int:
    """Features per step of the row kernels: 64, or the whole (padded) width below it."""
    return min(64, triton.next_power_of_2(width))


def _row_config() -> TileConfig:
    return TileConfig(ROWS_PER_PROGRAM, 16, 16, 4, 1)


def prepare_launch(
    x: torch.Tensor, precision: str, block_d: int | None = None, cosine: bool = False
) -> tuple[Launch, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The launch that makes the pair kernels' operands from the points ``x``
    (n, d), and its outputs (hi, lo, aux): the points (normalised for the
    cosine distance) padded to a multiple of ``block_d`` features (default
    ``feature_block``, what every candidate configuration uses; the padding
    adds 0 to every product and receives 0 gradient), split for 3xTF32 (fp32,
    "tf32x3"; else lo is hi); aux: the floored norms (cosine) or the squared
    norms (Euclidean)."""
    n, dim = x.shape
    block_d = block_d or feature_block(dim, x.dtype)
    width = -(-dim // block_d) * block_d
    split = x.dtype == torch.float32 and precision == "tf32x3"
    hi = torch.empty((n, width), dtype=x.dtype, device=x.device)
    lo = torch.empty_like(hi) if split else hi
    aux = torch.empty(n, dtype=_acc_dtype(x), device=x.device)
    launch = Launch(
        _prepare_kernel,
        (triton.cdiv(n, ROWS_PER_PROGRAM),),
        (x, hi, lo, aux, n, dim, width, x.stride(0), x.stride(1)),
        dict(SPLIT=split, COSINE=cosine, FP64=x.dtype == torch.float64, BLOCK_R=ROWS_PER_PROGRAM, BLOCK_W=_step(width)),
        _row_config(),
    )
    return launch, (hi, lo, aux)


def prepare(x: torch.Tensor, precision: str, block_d: int | None = None, cosine: bool = False):
    """(hi, lo, aux): see ``prepare_launch``."""
    launch, outputs = prepare_launch(x, precision, block_d, cosine)
    launch.run()
    return outputs


def operands(x: torch.Tensor, precision: str, block_d: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) of the points as given (not normalised), as the pair kernels read them."""
    return prepare(x, precision, block_d)[:2]


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
    queries,
    keys,
    query_labels,
    key_labels,
    query_sq,
    key_sq,
    temperature,
    offset,
    sums,
    far: float,
    eps: float,
    *,
    precision: str = "tf32x3",
) -> tuple[Launch, tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The launch that turns the forward parts ``sums`` into (lse_all, lse_same),
    exact for far rows, and the rows' losses; and its outputs ((lse_all,
    lse_same), loss), each (n_queries,).  ``queries`` / ``keys``: (hi, lo) from ``prepare``, as
    given to ``forward_launch``."""
    (q, q_lo), (k, k_lo) = queries, keys
    n_queries, width = q.shape
    config = exact_config(_chunk_of(width, q.dtype), q.dtype)
    _check_padding(q, k, config)
    lse = (
        torch.empty(n_queries, dtype=sums.dtype, device=q.device),
        torch.empty(n_queries, dtype=sums.dtype, device=q.device),
    )
    loss = torch.empty(n_queries, dtype=sums.dtype, device=q.device)
    euclidean = query_sq is not None
    products = _products(q, precision)
    products.pop("GRAD_SPLIT")  # no gradient product here
    launch = Launch(
        _finish_forward_kernel,
        (triton.cdiv(n_queries, config.block_m),),
        (
            q,
            q_lo,
            k,
            k_lo,
            query_labels,
            key_labels,
            query_sq if euclidean else loss,
            key_sq if euclidean else loss,
            temperature,
            sums,
            *lse,
            loss,
            n_queries,
            k.shape[0],
            offset,
            width,
            q.stride(0),
            k.stride(0),
            sums.shape[0],
            far,
            math.log(eps) if eps > 0 else 0.0,
        ),
        dict(
            EPS_ZERO=eps == 0,
            EUCLIDEAN=euclidean,
            FP64=q.dtype == torch.float64,
            **products,
            WHOLE_D=width <= config.block_d,
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=config.block_d,
        ),
        config,
    )
    return launch, (lse, loss)


def finish_backward_launch(
    parts, far_parts, x, norms, temperature, cosine: bool
) -> tuple[Launch, tuple[torch.Tensor, torch.Tensor]]:
    """The launch that adds the backward parts, the shared-exp launch's and
    the far pass's (each (grad (splits, n, width), h_sum, weighted
    (splits, n))), into the gradient of the raw points ``x`` (n, d), in x's
    dtype (cosine: through the normalisation, ``norms`` from ``prepare``),
    and each row's share of dl/dT; and those two outputs."""
    grad, h_sum, weighted = parts
    splits, n, width = grad.shape
    dim = x.shape[1]
    out = torch.empty((n, dim), dtype=x.dtype, device=x.device)
    t_share = torch.empty(n, dtype=grad.dtype, device=x.device)
    x = x if x.stride(1) == 1 else x.contiguous()
    launch = Launch(
        _finish_backward_kernel,
        (triton.cdiv(n, ROWS_PER_PROGRAM),),
        (
            grad,
            h_sum,
            weighted,
            *far_parts,
            x,
            norms if cosine else h_sum,
            temperature,
            out,
            t_share,
            n,
            dim,
            width,
            x.stride(0),
            splits,
        ),
        dict(EUCLIDEAN=not cosine, FP64=grad.dtype == torch.float64, BLOCK_R=ROWS_PER_PROGRAM, BLOCK_W=_step(dim)),
        _row_config(),
    )
    return launch, (out, t_share)


COEFFICIENT_ROWS = 256  # rows per program of the coefficients kernel (elementwise)


def coefficients_launch(
    lse_all: torch.Tensor, lse_same: torch.Tensor, upstream, eps: float, far: float
) -> tuple[Launch, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The launch of the backward kernels' per-row inputs (``_coefficients_kernel``)
    from the upstream gradients (``snnl.loss.options.Upstream``), and its
    outputs (coef, same_coef, exact (4, n), any_far (1,) int32)."""
    n = lse_all.shape[0]
    coef = torch.empty_like(lse_all)
    same_coef = torch.empty_like(coef)
    exact = torch.empty((4, n), dtype=lse_all.dtype, device=lse_all.device)
    any_far = torch.zeros(1, dtype=torch.int32, device=lse_all.device)
    launch = Launch(
        _coefficients_kernel,
        (triton.cdiv(n, COEFFICIENT_ROWS),),
        (
            lse_all,
            lse_same,
            upstream.rows,
            upstream.rows if upstream.lse_all is None else upstream.lse_all,
            upstream.rows if upstream.lse_same is None else upstream.lse_same,
            coef,
            same_coef,
            exact,
            any_far,
            n,
            far,
            math.log(eps) if eps > 0 else 0.0,
        ),
        # (the loss layer gives both gradients of the log-sum-exps or neither)
        dict(EPS_ZERO=eps == 0, LSE_GRADS=upstream.lse_all is not None, BLOCK_R=COEFFICIENT_ROWS),
        TileConfig(COEFFICIENT_ROWS, 16, 16, 4, 1),
    )
    return launch, (coef, same_coef, exact, any_far)
