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

with a = g_all / S and c = g_same / N per row (``rows.coefficients``).  Rows
whose sums underflow this shared scale ("far" rows: all neighbours more than
about 50 T away in fp32) are recomputed exactly on the GPU, with no host
synchronisation: their log-sum-exps by ``rows``' finish_forward, their
gradient terms by the backward kernel's far pass (``Terms.FAR_PASS``, a
launch whose loop has no trips when no row is far).

Work is split two ways: row tiles of BLOCK_M queries, and the key range cut
into contiguous parts, one program each, so that small batches still fill
the GPU; every program writes its own partial sums (forward) or partial
gradient rows (backward) to its own slot, and the finishing kernels add the
parts in a fixed order: deterministic, no atomics.  The row tile is loaded
once, before the loop over key tiles, which is the loop Triton pipelines; the
loop is a helper that returns exactly its loop state (Triton's fused
attention tutorial).  Feature dimensions above BLOCK_D are looped over in
chunks; the backward pass then gives each chunk of output features its own
program (grid axis 2) that recomputes the logits, instead of reading and
writing gradient rows in global memory for every key tile.

Products (``layout.Math``): fp32 inputs run on the tensor cores in 3xTF32
(three TF32 products, about fp32 accuracy; the default), one TF32 product
(~1e-3 relative) or the FMA units ("ieee"); fp16/bf16 inputs use the tensor
cores directly, and the backward product H @ x runs in fp32 (3xTF32) so the
gradient keeps fp32 accuracy; fp64 uses fp64 arithmetic throughout.  Offsets
inside a tile are int32 off an int64 base.

Every choice of the compiled code is named in ``configs`` (tiles, warps,
stages, candidates, the parts of the key range); the tiles the kernels are
made of are ``tiles``; what they take, ``layout``.
``snnl.kernel_tools.lab`` compiles every launch for real GPU targets without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import Launch, TileConfig, keys_per_part
from .layout import Coefficients, Math, Parts, Side, Terms
from .tiles import LOG2E, chunk, dot3, exact_terms, key_tile, logits, pair_masks, row_tile, split_tf32


@triton.jit
def _forward_loop(
    sum_all, sum_same, Q, rows, K, start, stop, scale,
    M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The loop over key tiles start .. stop: the sums of w (all pairs, same class) per row."""
    for c0 in range(start, stop, BLOCK_N):
        keys = key_tile(K, c0, stop, M, BLOCK_N, BLOCK_D)
        s2, _ = logits(Q, rows, K, c0, keys, scale, M, BLOCK_M, BLOCK_N, BLOCK_D)
        keep, same = pair_masks(rows, K, c0, keys[2], BLOCK_N)
        w = tl.where(keep, tl.exp2(s2), 0.0)
        sum_all += tl.sum(w, axis=1)
        sum_same += tl.sum(tl.where(same, w, 0.0), axis=1)
    return sum_all, sum_same


@triton.jit
def _forward_kernel(
    Q, K, TEMPERATURE, SUMS, offset, keys_per_part,
    M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Partial sums over this program's part of the key range:
    SUMS[part, 0, i] = sum_j w_ij, SUMS[part, 1, i] = sum_{same class} w_ij.
    Q, K: ``layout.Side``; query i is key ``offset`` + i."""
    first = tl.program_id(0).to(tl.int64) * BLOCK_M
    part = tl.program_id(1)
    rows = row_tile(Q, first, offset, M, BLOCK_M, BLOCK_D)
    scale = LOG2E / tl.load(TEMPERATURE)
    sum_all = tl.zeros((BLOCK_M,), M.ACC)
    start = part * keys_per_part
    stop = tl.minimum(start + keys_per_part, K.n)
    sum_all, sum_same = _forward_loop(sum_all, sum_all, Q, rows, K, start, stop, scale, M, BLOCK_M, BLOCK_N, BLOCK_D)
    out = SUMS + part.to(tl.int64) * 2 * Q.n + first + tl.arange(0, BLOCK_M)
    ok = rows[4]
    tl.store(out, sum_all, mask=ok)
    tl.store(out + Q.n, sum_same, mask=ok)


@triton.jit
def _pair_terms(
    s2, keep, same, own, ROW, COL, first, c0, rows_ok, keys_ok, n_rows, n_cols,
    T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """(H, own) of a tile of pairs: the derivative's terms that ``T`` asks for
    (see the module docstring), and the rows' own ones.  ``own``: the rows'
    (a, c), loaded once; ROW, COL: the sides' ``layout.Coefficients``."""
    h = tl.zeros_like(s2)
    own_terms = h
    if T.FAR_PASS:
        if T.OWN:
            own_terms = exact_terms(ROW.exact + first, tl.arange(0, BLOCK_M), rows_ok, n_rows, s2, keep, same, 1)
        if T.THEIR:
            h = exact_terms(COL.exact + c0, tl.arange(0, BLOCK_N), keys_ok, n_cols, s2, keep, same, 0)
    else:
        w = tl.where(keep, tl.exp2(s2), 0.0)
        if T.OWN:
            own_terms = w * (own[0][:, None] + tl.where(same, own[1][:, None], 0.0))
        if T.THEIR:
            col_a = tl.load(COL.a + c0 + tl.arange(0, BLOCK_N), mask=keys_ok, other=0.0)
            col_c = tl.load(COL.c + c0 + tl.arange(0, BLOCK_N), mask=keys_ok, other=0.0)
            h = w * (col_a[None, :] + tl.where(same, col_c[None, :], 0.0))
    return h + own_terms, own_terms


@triton.jit
def _times_points(acc, h, values, values_lo, M: tl.constexpr):
    """acc + H @ x for a key tile of points x (hi, and lo when split): fp64 in
    fp64; 3xTF32 when M.GRAD_THREE_TF32 (H split in registers; x split in
    memory, or exact in TF32 for half inputs); else one product."""
    if M.ACC == tl.float64:
        acc += tl.dot(h, values, input_precision="ieee")
    elif M.GRAD_THREE_TF32:
        h_hi, h_lo = split_tf32(h)
        if M.THREE_TF32:
            acc = dot3(h_hi, h_lo, values, values_lo, acc)
        else:  # half inputs: exact in TF32, no lo part
            acc = tl.dot(h_lo, values.to(tl.float32), acc, input_precision="tf32")
            acc = tl.dot(h_hi, values.to(tl.float32), acc, input_precision="tf32")
    else:
        acc += tl.dot(h, values.to(tl.float32), input_precision=M.PRECISION)
    return acc


@triton.jit
def _backward_loop(
    acc, h_sum, weighted, R, rows, own, ROW, C, COL, start, stop, out_k, scale,
    M: tl.constexpr, T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The loop over column tiles start .. stop: sum_j H_ij x_j (this
    program's output features from ``out_k``), sum_j H_ij and sum_j own_ij s_ij."""
    for c0 in range(start, stop, BLOCK_N):
        keys = key_tile(C, c0, stop, M, BLOCK_N, BLOCK_D)
        s2, unclamped = logits(R, rows, C, c0, keys, scale, M, BLOCK_M, BLOCK_N, BLOCK_D)
        keep, same = pair_masks(rows, C, c0, keys[2], BLOCK_N)
        h, own_terms = _pair_terms(
            s2, keep, same, own, ROW, COL, rows[6], c0, rows[4], keys[2], R.n, C.n, T, BLOCK_M, BLOCK_N
        )
        if T.WEIGHTED:
            weighted += tl.sum(own_terms * s2, axis=1)
        if M.EUCLIDEAN:
            h = tl.where(unclamped, h, 0.0)
            h_sum += tl.sum(h, axis=1)
        # the key tile of the logits is reused for H @ x where it holds all features
        values = keys[0]
        values_lo = keys[1]
        if not M.WHOLE_D:
            values = chunk(C, tl.cast(c0, tl.int64), keys[2], out_k, 0, M, BLOCK_N, BLOCK_D)
            values_lo = values
            if M.THREE_TF32:
                values_lo = chunk(C, tl.cast(c0, tl.int64), keys[2], out_k, 1, M, BLOCK_N, BLOCK_D)
        acc = _times_points(acc, h, values, values_lo, M)
    return acc, h_sum, weighted


@triton.jit
def _backward_kernel(
    R, C, TEMPERATURE, ROW, COL, ANY_FAR, OUT, self_delta, cols_per_part,
    M: tl.constexpr, T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Partial backward sums over this program's part of the column range
    (OUT, ``layout.Parts``): grad[part, i, chunk] = sum_j H_ij x_j (this
    program's chunk of features), hsum[part, i] = sum_j H_ij, weighted[part,
    i] = sum_j own_ij s_ij log2(e).  Row i and column j are the same point
    when i + self_delta == j.  R, C: ``layout.Side``; ROW, COL:
    ``layout.Coefficients`` of the sides whose terms ``T`` asks for.

    T.FAR_PASS: the far rows' terms instead.  Their terms are left out of the
    shared coefficients (a, c = 0) and computed in exact form, each with its
    own shift, from the exact coefficients (e_all, e_same, lse_all log2(e),
    lse_same log2(e)), e = g for the far rows' parts, 0 elsewhere:

        own_ij = e_all_i 2^(s2_ij - L_all_i) + [same] e_same_i 2^(s2_ij - L_same_i)

    A launch of its own (one part, written as zeros when ``ANY_FAR[0]`` is 0:
    its loop then has no trips), so that the common launch carries none of
    its code or registers, and no host synchronisation decides whether it runs."""
    first = tl.program_id(0).to(tl.int64) * BLOCK_M
    part = tl.program_id(1)
    out_k = tl.program_id(2) * BLOCK_D  # this program's output features
    rows = row_tile(R, first, self_delta, M, BLOCK_M, BLOCK_D)
    ok = rows[4]
    scale = LOG2E / tl.load(TEMPERATURE)
    index = tl.arange(0, BLOCK_M)
    own = (index, index)  # placeholders unless the rows' own terms
    if T.OWN:
        own = (tl.load(ROW.a + first + index, mask=ok, other=0.0), tl.load(ROW.c + first + index, mask=ok, other=0.0))
    acc = tl.zeros((BLOCK_M, BLOCK_D), M.ACC)
    h_sum = tl.zeros((BLOCK_M,), M.ACC)
    start = part * cols_per_part
    stop = tl.minimum(start + cols_per_part, C.n)
    if T.FAR_PASS:  # no trips without far rows
        stop = tl.where(tl.load(ANY_FAR) != 0, stop, start)
    acc, h_sum, weighted = _backward_loop(
        acc, h_sum, h_sum, R, rows, own, ROW, C, COL, start, stop, out_k, scale, M, T, BLOCK_M, BLOCK_N, BLOCK_D
    )
    features = out_k + tl.arange(0, BLOCK_D)
    grad = OUT.grad + (part.to(tl.int64) * R.n + first) * R.width
    tl.store(grad + index[:, None] * R.width + features[None, :], acc, mask=ok[:, None])
    if tl.program_id(2) == 0:
        at = part.to(tl.int64) * R.n + first + index
        tl.store(OUT.hsum + at, h_sum, mask=ok)
        tl.store(OUT.weighted + at, weighted, mask=ok)


# --------------------------------------------------------------------------- launches


def _check_sides(a: Side, b: Side, config: TileConfig) -> None:
    # the kernels read features without masks: whole chunks must lie in the buffers
    if a.width != b.width or a.width % config.block_d:
        raise ValueError(
            f"operands of {a.width} and {b.width} features for feature chunks of {config.block_d}: "
            f"make them with snnl.kernels.rows.prepare_launch(..., block_d={config.block_d})"
        )


def _part(n_rows: int, n_cols: int, config: TileConfig, parts: int | None) -> int:
    """Keys per part of the key range: ``parts`` parts if given, else as many
    as fill the GPU (``configs.keys_per_part``); a whole number of key tiles."""
    if parts:
        return triton.cdiv(triton.cdiv(n_cols, parts), config.block_n) * config.block_n
    return keys_per_part(n_rows, n_cols, config)


def forward_launch(
    queries: Side, keys: Side, temperature, offset: int, *, config: TileConfig, math: Math, parts: int | None = None
) -> tuple[Launch, torch.Tensor]:
    """The forward launch and its output buffer of partial sums (parts, 2, n_queries)."""
    _check_sides(queries, keys, config)
    part = _part(queries.n, keys.n, config, parts)
    n_parts = triton.cdiv(keys.n, part)
    acc = torch.float64 if math.ACC == tl.float64 else torch.float32
    sums = torch.empty((n_parts, 2, queries.n), dtype=acc, device=queries.ops.device)
    launch = Launch(
        _forward_kernel,
        grid=(triton.cdiv(queries.n, config.block_m), n_parts),
        args=dict(Q=queries, K=keys, TEMPERATURE=temperature, SUMS=sums, offset=offset, keys_per_part=part),
        constexprs=dict(M=math, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d),
        config=config,
    )
    return launch, sums


def backward_launch(
    rows: Side,
    cols: Side,
    temperature,
    row_coefficients: Coefficients | None,
    col_coefficients: Coefficients | None,
    *,
    self_delta: int,
    weighted: bool,
    config: TileConfig,
    math: Math,
    parts: int | None = None,
    any_far: torch.Tensor | None = None,
    far_pass: bool = False,
) -> tuple[Launch, Parts]:
    """One backward launch (see ``_backward_kernel``) and its output buffers.
    ``row_coefficients`` / ``col_coefficients``: for the side whose terms are
    wanted, or None; ``weighted``: also each row's share of the temperature's
    gradient; ``any_far``: a (1,) int32 flag on the device, nonzero when some
    row is far (default: none); ``far_pass``: the launch of the far rows'
    terms (one part)."""
    _check_sides(rows, cols, config)
    part = _part(rows.n, cols.n, config, 1 if far_pass else parts)
    n_parts = triton.cdiv(cols.n, part)
    device = rows.ops.device
    acc = torch.float64 if math.ACC == tl.float64 else torch.float32
    out = Parts(
        torch.empty((n_parts, rows.n, rows.width), dtype=acc, device=device),
        torch.empty((n_parts, rows.n), dtype=acc, device=device),
        torch.empty((n_parts, rows.n), dtype=acc, device=device),
    )
    if any_far is None:
        any_far = torch.zeros(1, dtype=torch.int32, device=device)
    unused = Coefficients(out.hsum, out.hsum, out.hsum)  # a side whose terms are not wanted: never read
    chunks = 1 if math.WHOLE_D else triton.cdiv(rows.width, config.block_d)
    launch = Launch(
        _backward_kernel,
        grid=(triton.cdiv(rows.n, config.block_m), n_parts, chunks),
        args=dict(
            R=rows,
            C=cols,
            TEMPERATURE=temperature,
            ROW=row_coefficients or unused,
            COL=col_coefficients or unused,
            ANY_FAR=any_far,
            OUT=out,
            self_delta=self_delta,
            cols_per_part=part,
        ),
        constexprs=dict(
            M=math,
            T=Terms(
                OWN=row_coefficients is not None,
                THEIR=col_coefficients is not None,
                WEIGHTED=weighted,
                FAR_PASS=far_pass,
            ),
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            BLOCK_D=config.block_d,
        ),
        config=config,
    )
    return launch, out
