"""The fast CPU path: symmetric block pairs, one exp per pair, compiled tiles.

The batch is cut into blocks of rows.  In the square case (the batch against
itself) the logits are symmetric, s_ij = s_ji, so each unordered pair of
blocks (I <= J) is computed once and serves both its rows and its columns:
about half the products and exponentials of a pass of row blocks against the
whole batch (``chunked``).  Memory stays O(b * block).  The exponential of a
pair is computed once and shared by both directions and both sums, forward
and backward, with the exact pass for "far" rows (``shared_exp``).

With few classes the forward tiles get their sums from two thin products with
one-hot label matrices (W @ Y and Y^T @ W: the mass on each class per row and
per column), so a tile is one GEMM, one elementwise pass and two thin GEMMs.

Queries against keys (torch.distributed: a process's rows against the
gathered batch) are not symmetric: blocks of queries against blocks of keys,
the rows' own terms only, with the same tiles.  A batch that fits in one block
is one tile, kept from the forward pass for the backward pass.

The points arrive raw: the cosine distance's normalisation (and its
Jacobian in the backward pass) happens here, fused, instead of as separate
autograd ops.  The elementwise work is a handful of functions compiled with
``torch.compile`` (dynamic shapes, so one compilation serves every block and
batch size) where that works, and run eagerly otherwise (``SNNL_COMPILE=0``,
or no compiler on the machine).  Blocks are processed in a fixed order:
results are deterministic.
"""

from __future__ import annotations

import torch

from .compiled import Compiled as _Compiled
from .rowwise import rows_loss
from .shared_exp import FAR, exact_backward, exact_forward, far_rows, log_sums, shared_coefficients
from .shared_exp import logits as pair_logits

# Rows of one block.  1024^2 tiles (4 MiB in fp32) keep the products
# (1024 x d x 1024) near the GEMM's peak while a few temporaries stay cache
# sized; 512-2048 measure within 20% of each other (bench/test_loss_cpu.py).
BLOCK_ROWS = 1024

# Up to this many classes in a batch, the forward tiles sum per class with
# thin products against one-hot label matrices instead of comparing labels
# pair by pair; the products cost about 2 x classes / d of the tile's own.
ONEHOT_MAX_CLASSES = 32

# F.normalize's floor on the norm (the reference and every other backend use it).
NORM_EPS = 1e-12


# --------------------------------------------------------------------------- elementwise work (compiled)


def normalize(z):
    """Unit rows z / max(|z|, NORM_EPS), as ``F.normalize``, and the norms."""
    norm = torch.linalg.vector_norm(z, dim=1).clamp_min(NORM_EPS)
    return z / norm[:, None], norm


def normalize_backward(raw, x, norm, temperature):
    """Gradient of z from sum_j H_ij x_j for s_ij = (<x_i, x_j> - 1) / T, x = z / |z|:
    (g - x <x, g>) / |z| with g = raw / T (just g / NORM_EPS where |z| was floored)."""
    g = raw / temperature
    radial = torch.where(norm > NORM_EPS, (x * g).sum(1), 0.0)
    return (g - x * radial[:, None]) / norm[:, None]


def _weights(logits, ids_a, ids_b, self_pairs: bool):
    """w = exp(s), exactly 0 on self pairs (equal ids: the points' indices in
    the key batch).  Only tiles that can hold a self pair compare ids."""
    w = torch.exp(logits)
    return torch.where(ids_a[:, None] == ids_b[None, :], 0.0, w) if self_pairs else w


def forward_tile(a, aux_a, codes_a, ids_a, onehot_a, onehot_t_a, b, aux_b, codes_b, ids_b, onehot_b, onehot_t_b,
                 temperature, euclidean: bool, columns: bool):
    """Row sums (S, N) of w = exp(s) over the tile and, with ``columns`` (an
    off-diagonal block pair of the square case: no self pairs), the column
    sums.  With one-hot label matrices (``onehot_t`` their transposed copies)
    the sums come from W @ Y_b and Y_a^T @ W; with none (empty matrices: many
    classes) from comparing the label codes pair by pair."""
    logits, _ = pair_logits(a, b, aux_a, aux_b, temperature, euclidean)
    w = _weights(logits, ids_a, ids_b, not columns)
    if onehot_a.shape[1] > 0:
        per_class = w @ onehot_b
        rows = per_class.sum(1), (per_class * onehot_a).sum(1)
        if not columns:
            return rows
        per_class = onehot_t_a @ w  # not w.T @ Y_a: MKL runs that layout at a third of the speed
        return (*rows, per_class.sum(0), (per_class * onehot_t_b).sum(0))
    w_same = torch.where(codes_a[:, None] == codes_b[None, :], w, 0.0)
    if columns:
        return w.sum(1), w_same.sum(1), w.sum(0), w_same.sum(0)
    return w.sum(1), w_same.sum(1)


def backward_tile(a, aux_a, codes_a, ids_a, coef_a, same_coef_a, b, aux_b, codes_b, ids_b, coef_b, same_coef_b,
                  temperature, euclidean: bool, columns: bool):
    """One tile's share of the backward pass.

    H_ij = dl_i/ds_ij (the rows' own terms) plus, with ``columns`` (an
    off-diagonal block pair of the square case), dl_j/ds_ji (the columns'
    terms; s is symmetric).  Returns H @ b, H^T @ a, the row and column sums
    of H (Euclidean distance) and sum(H * s) (for the temperature's gradient).
    """
    logits, unclamped = pair_logits(a, b, aux_a, aux_b, temperature, euclidean)
    w = _weights(logits, ids_a, ids_b, not columns)
    same = codes_a[:, None] == codes_b[None, :]
    h = w * (coef_a[:, None] + torch.where(same, same_coef_a[:, None], 0.0))
    if columns:
        h = h + w * (coef_b[None, :] + torch.where(same, same_coef_b[None, :], 0.0))
    weighted = (h * logits).sum()
    if euclidean:
        h = torch.where(unclamped, h, 0.0)
        return h @ b, h.T @ a, h.sum(1), h.sum(0), weighted
    return h @ b, h.T @ a, None, None, weighted


def dense_forward(z, labels, temperature, euclidean: bool, far: float):
    """The whole square batch as one tile, from the raw points to the two
    per-row log-sum-exps, in one compiled call (small batches are all
    overhead otherwise).  Returns the prepared points and their aux values,
    the weights and logits kept for the backward pass (Euclidean logits
    unclamped, -raw / T, so that it can tell which distances were clamped),
    lse_all, lse_same and the mask of far rows."""
    x, aux = (z, (z * z).sum(1)) if euclidean else normalize(z)
    dots = x @ x.T
    kept = -(aux[:, None] + aux[None, :] - 2.0 * dots) / temperature if euclidean else (dots - 1.0) / temperature
    logits = kept.clamp_max(0.0) if euclidean else kept
    index = torch.arange(x.shape[0], device=x.device)
    not_self = index[:, None] != index[None, :]
    same = (labels[:, None] == labels[None, :]) & not_self
    w = torch.where(not_self, torch.exp(logits), 0.0)
    sum_all, sum_same = w.sum(1), torch.where(same, w, 0.0).sum(1)
    lse_all, lse_same = log_sums(sum_all, sum_same, same.sum(1), far)
    far_mask = (lse_all < -far) | (lse_same.isfinite() & (lse_same < -far))
    return x, aux, w, kept, lse_all, lse_same, far_mask


def dense_backward(x, labels, w, kept, lse_all, lse_same, eps: float, grad_rows, far: float, euclidean: bool):
    """The one-tile backward pass up to the points' gradient: H = G + G^T with
    G_ij = dl_i/ds_ij (s is symmetric), then H @ x in one product."""
    coef, same_coef, g_all, g_same, far_all, far_same = shared_coefficients(lse_all, lse_same, eps, grad_rows, far)
    same = labels[:, None] == labels[None, :]
    g = w * (coef[:, None] + torch.where(same, same_coef[:, None], 0.0))
    logits = kept.clamp_max(0.0) if euclidean else kept
    weighted = (g * logits).sum()
    h = g + g.T
    if euclidean:
        h = torch.where(kept <= 0.0, h, 0.0)  # a distance clamped at 0 passes no gradient
    return h @ x, h.sum(1), weighted, g_all, g_same, far_all, far_same


_normalize = _Compiled(normalize)
_normalize_backward = _Compiled(normalize_backward)
_forward_tile = _Compiled(forward_tile)
_backward_tile = _Compiled(backward_tile)
_dense_forward = _Compiled(dense_forward)
_dense_backward = _Compiled(dense_backward)
_shared_coefficients = _Compiled(shared_coefficients)


# --------------------------------------------------------------------------- bookkeeping


def _prepare(z, euclidean: bool):
    """(points, aux): unit rows and their norms (cosine), or the points and
    their squared norms (Euclidean)."""
    if euclidean:
        return z, (z * z).sum(1)
    return _normalize(z)


def _points_gradient(raw, hsum, x, aux, temperature, euclidean: bool):
    """From sum_j H_ij c_j (and sum_j H_ij) to the gradient of the raw points."""
    if euclidean:  # s_ij = -|x_i - c_j|^2 / T
        return -2.0 * (hsum[:, None] * x - raw) / temperature
    return _normalize_backward(raw, x, aux, temperature)


def _labels(query_labels, key_labels, dtype, square: bool):
    """Labels as dense int32 codes (cheaper to compare than int64 ids), the
    number of same-class keys besides itself per query, and one-hot matrices
    of the codes in ``dtype`` when there are few classes (else empty (n, 0)
    matrices; none at all when ``dtype`` is None)."""
    labels = query_labels if square else torch.cat([query_labels, key_labels])
    classes, codes = torch.unique(labels, return_inverse=True)
    codes = codes.to(torch.int32)
    query_codes, key_codes = (codes, codes) if square else (codes[: len(query_labels)], codes[len(query_labels):])
    same_count = torch.bincount(key_codes, minlength=len(classes))[query_codes] - 1  # minus the self pair
    if dtype is None:
        return query_codes, key_codes, same_count, None, None
    # Columns padded to a multiple of 16: MKL's thin products run 4x faster
    # with 16 columns than with 10.
    n_columns = -(-len(classes) // 16) * 16 if len(classes) <= ONEHOT_MAX_CLASSES else 0
    onehot = torch.zeros(len(codes), n_columns, dtype=dtype, device=codes.device)
    if n_columns:
        onehot[torch.arange(len(codes), device=codes.device), codes.long()] = 1.0
    onehot_q, onehot_k = (onehot, onehot) if square else (onehot[: len(query_labels)], onehot[len(query_labels):])
    return query_codes, key_codes, same_count, onehot_q, onehot_k


def _ids(n_queries: int, offset: int, n_keys: int, device):
    """The points' indices in the key batch (int32 where they fit): query i is key offset + i."""
    dtype = torch.int32 if n_keys < 2**31 else torch.int64
    return (torch.arange(offset, offset + n_queries, device=device, dtype=dtype),
            torch.arange(n_keys, device=device, dtype=dtype))


def _bounds(n: int, block_rows: int) -> list[tuple[int, int]]:
    """Nearly equal blocks of at most ``block_rows`` rows (no sliver at the end)."""
    count = max(1, -(-n // block_rows))
    edges = [round(i * n / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _split(bounds, *tensors):
    """Per block, copies of the tensors' rows.  Copies, not views: every block
    then starts at storage offset 0, which keeps ``torch.compile`` from
    guarding on (and recompiling for) each view's offset."""
    return [tuple(t[i0:i1].clone() for t in tensors) for i0, i1 in bounds]


def _tile_pairs(q_blocks, k_blocks, square: bool):
    """(row block, column block, columns) in a fixed order: every unordered
    pair once in the square case (``columns``: off-diagonal, serves both
    directions), every pair otherwise."""
    if square:
        return [(i, j, i != j) for i in range(len(q_blocks)) for j in range(i, len(q_blocks))]
    return [(i, j, False) for i in range(len(q_blocks)) for j in range(len(k_blocks))]


# --------------------------------------------------------------------------- the autograd Function


class BlockedSoftNearestNeighbor(torch.autograd.Function):
    """Per-query loss of raw points against keys (see the module docstring).

    ``square``: the queries are the keys (one tensor, offset 0); the symmetric
    scheme applies and the whole gradient is returned through ``queries``.
    """

    @staticmethod
    def forward(ctx, queries, keys, query_labels, key_labels, temperature, offset: int, euclidean: bool,
                eps: float, block_rows: int, square: bool):
        far = FAR[queries.dtype]
        q_blocks, k_blocks = _bounds(queries.shape[0], block_rows), _bounds(keys.shape[0], block_rows)
        if square and len(q_blocks) == 1:
            q, q_aux, *kept, lse_all, lse_same, far_mask = _dense_forward(queries, query_labels, temperature,
                                                                          euclidean, far)
            k, k_aux, q_ids = q, q_aux, torch.arange(q.shape[0], device=q.device)
            far_index = torch.nonzero(far_mask).flatten()
        else:
            kept = ()
            q, q_aux = _prepare(queries, euclidean)
            k, k_aux = (q, q_aux) if square else _prepare(keys, euclidean)
            q_codes, k_codes, same_count, onehot_q, onehot_k = _labels(query_labels, key_labels, q.dtype, square)
            q_ids, k_ids = _ids(q.shape[0], offset, k.shape[0], q.device)
            sum_all, sum_same = q.new_zeros(q.shape[0]), q.new_zeros(q.shape[0])
            rows = [(*block, block[-1].T.contiguous())  # and Y^T, for Y^T @ W
                    for block in _split(q_blocks, q, q_aux, q_codes, q_ids, onehot_q)]
            cols = rows if square else [(*block, block[-1].T.contiguous())
                                        for block in _split(k_blocks, k, k_aux, k_codes, k_ids, onehot_k)]
            for i, j, columns in _tile_pairs(q_blocks, k_blocks, square):
                sums = _forward_tile(*rows[i], *cols[j], temperature, euclidean, columns)
                (i0, i1), (j0, j1) = q_blocks[i], k_blocks[j]
                sum_all[i0:i1] += sums[0]
                sum_same[i0:i1] += sums[1]
                if columns:
                    sum_all[j0:j1] += sums[2]
                    sum_same[j0:j1] += sums[3]
            lse_all, lse_same = log_sums(sum_all, sum_same, same_count, far)
            far_index = far_rows(lse_all, lse_same, far)
        exact_forward(far_index, q, k, query_labels, key_labels, q_ids, q_aux, k_aux, temperature, euclidean,
                      lse_all, lse_same)
        ctx.save_for_backward(q, k, q_aux, k_aux, query_labels, key_labels, temperature, lse_all, lse_same, *kept)
        ctx.offset, ctx.euclidean, ctx.eps, ctx.block_rows, ctx.square = offset, euclidean, eps, block_rows, square
        return rows_loss(lse_all, lse_same, eps)

    @staticmethod
    def backward(ctx, grad_rows):
        q, k, q_aux, k_aux, query_labels, key_labels, temperature, lse_all, lse_same, *kept = ctx.saved_tensors
        euclidean, square, far = ctx.euclidean, ctx.square, FAR[q.dtype]
        q_ids = torch.arange(ctx.offset, ctx.offset + q.shape[0], device=q.device)
        if kept:
            raw_q, hsum_q, weighted, g_all, g_same, far_all, far_same = _dense_backward(
                q, query_labels, *kept, lse_all, lse_same, ctx.eps, grad_rows, far, euclidean)
            raw_k, hsum_k = raw_q, hsum_q
        else:
            coef, same_coef, g_all, g_same, far_all, far_same = _shared_coefficients(
                lse_all, lse_same, ctx.eps, grad_rows, far)
            q_codes, k_codes, _, _, _ = _labels(query_labels, key_labels, None, square)
            q_ids, k_ids = _ids(q.shape[0], ctx.offset, k.shape[0], q.device)
            # Accumulators: sum_j H_ij c_j and sum_j H_ij per point, queries and keys.
            raw_q, hsum_q = torch.zeros_like(q), q.new_zeros(q.shape[0])
            raw_k, hsum_k = (raw_q, hsum_q) if square else (torch.zeros_like(k), k.new_zeros(k.shape[0]))
            weighted = q.new_zeros(())
            q_blocks, k_blocks = _bounds(q.shape[0], ctx.block_rows), _bounds(k.shape[0], ctx.block_rows)
            rows = _split(q_blocks, q, q_aux, q_codes, q_ids, coef, same_coef)
            # Key blocks of queries vs keys carry no coefficients (their own terms
            # belong to the processes that own them): empty stand-ins.
            cols = rows if square else [(*block, coef[:0], coef[:0])
                                        for block in _split(k_blocks, k, k_aux, k_codes, k_ids)]
            for i, j, columns in _tile_pairs(q_blocks, k_blocks, square):
                col = cols[j] if columns else (*cols[j][:4], coef[:0], coef[:0])
                part_q, part_k, hsum_a, hsum_b, tile_weighted = _backward_tile(
                    *rows[i], *col, temperature, euclidean, columns)
                (i0, i1), (j0, j1) = q_blocks[i], k_blocks[j]
                raw_q[i0:i1] += part_q
                raw_k[j0:j1] += part_k
                weighted = weighted + tile_weighted
                if euclidean:
                    hsum_q[i0:i1] += hsum_a
                    hsum_k[j0:j1] += hsum_b

        # the far rows' terms, each with its own maximum
        weighted = weighted + exact_backward(far_all, far_same, q, k, query_labels, key_labels, q_ids, q_aux, k_aux,
                                             temperature, euclidean, lse_all, lse_same, g_all, g_same,
                                             raw_q, hsum_q, raw_k, hsum_k)

        grad_q = _points_gradient(raw_q, hsum_q, q, q_aux, temperature, euclidean)
        grad_k = None if square else _points_gradient(raw_k, hsum_k, k, k_aux, temperature, euclidean)
        grad_t = -weighted / temperature if ctx.needs_input_grad[4] else None  # s = -d / T: ds/dT = -s / T
        return grad_q, grad_k, None, None, grad_t, None, None, None, None, None


def blocked_rows(z, labels, temperature, euclidean: bool, eps: float, block_rows: int | None = None, *,
                 keys=None, key_labels=None, offset: int = 0):
    """Per-row losses of the raw points ``z`` against ``keys`` (default: ``z`` itself)."""
    square = keys is None
    return BlockedSoftNearestNeighbor.apply(
        z, z if square else keys, labels, labels if square else key_labels, temperature, offset, euclidean, eps,
        block_rows or BLOCK_ROWS, square,
    )
