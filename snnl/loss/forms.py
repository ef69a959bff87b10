"""The contrastive forms beside SNNL: SupCon's L_out and NT-Xent's per-pair form.

With logits s_ij = -d(z_i, k_j) / T over the keys j other than i, and P(i)
the keys of i's class (its positives):

- **L_in**, SNNL's own (``soft_nearest_neighbor_loss``): minus the log of
  the share of the softmax mass on the positives,
  ``logsumexp_all - logsumexp_P``.
- **L_out** (``supcon_loss``; Khosla et al.'s recommended form and
  pytorch-metric-learning's ``SupConLoss``): minus the mean over the
  positives of the log-probability, ``logsumexp_all - mean_P s_ij``.  The
  mean of the positive logits needs no pair at all: the cosine logits are
  linear in the key, so their sum over a class is one dot product with the
  class's sum of unit keys; the squared Euclidean ones are, per class,
  ``n_c |x_i - m_c|^2 + sum_c |k_j - m_c|^2`` (the class mean m_c: no
  cancellation against a large |x|).  So L_out is SNNL's ``logsumexp_all``
  from any backend (the fused kernels included) less an O(b d) term: O(b d)
  memory beside the backend's own.
- **per positive pair** (``ntxent_loss``; pytorch-metric-learning's
  ``NTXentLoss``): one term per positive pair (i, p) against i's negatives
  only, ``log(exp(s_ip) + sum_neg exp(s_in)) - s_ip``, averaged over the
  pairs.  With exactly one positive per row it is L_in and L_out; with
  several it differs from both.  Computed here in blocks of rows with plain
  torch operations, each block recomputed in the backward pass
  (``torch.utils.checkpoint``): O(block x keys) memory, not the fused kernels.

Both take what ``soft_nearest_neighbor_loss`` takes for the batch (a (b, d)
or (b, views, d) ``z``; labels or, for a multi-view batch, none: each
sample's views are its positives; ``keys`` / ``key_labels``) and the same
``distance`` choices.  Rows without a positive have no term: they are left
out of the mean (pytorch-metric-learning's reducers do the same).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

from ..choices import FORM_REDUCTIONS
from . import ops, registry, validation
from .backends.reference import pairwise_distance, unit_rows
from .functional import Rows, _autocast_on, _backend_call, prepare_rows, soft_nearest_neighbor_loss
from .rowwise import compute_dtype, euclidean_centre

# rows per block of the per-pair form: a block's logits are (block, keys)
PAIR_BLOCK_ROWS = 256


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False) if _autocast_on(x) else contextlib.nullcontext()


def _check(distance: str, reduction: str, backend: str, precision: str) -> None:
    validation.check_options(distance, 0.0, "mean", backend, precision)
    validation.check_choice("reduction", reduction, FORM_REDUCTIONS)


def _class_slots(query_labels: torch.Tensor, key_labels: torch.Tensor):
    """(each key's class slot, each query's class slot, the number of keys of
    each query's class): a slot is the first position of the class among the
    sorted key labels, so that per-class sums are an ``index_add`` into one
    row per key, with static shapes (no ``unique``: nothing to synchronise,
    nothing for ``torch.compile`` to break on)."""
    sorted_labels = torch.sort(key_labels).values
    key_slot = torch.searchsorted(sorted_labels, key_labels)
    first = torch.searchsorted(sorted_labels, query_labels)
    count = torch.searchsorted(sorted_labels, query_labels, right=True) - first
    return key_slot, first.clamp_max(key_labels.shape[0] - 1), count


def positive_logit_means(inputs, distance: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over each query's positives of s_ij, the number of positives),
    in O(b d) (the module docstring); the mean is 0 where there is none."""
    queries, keys, query_labels, key_labels, temperature = inputs
    square = keys is None
    keys, key_labels = (queries, query_labels) if square else (keys, key_labels)
    key_slot, slot, count = _class_slots(query_labels, key_labels)
    positives = count - int(square)  # a query is not its own positive
    if distance == "cosine":
        unit_q = unit_rows(queries)
        unit_k = unit_q if square else unit_rows(keys)
        class_sum = torch.zeros_like(unit_k).index_add(0, key_slot, unit_k)[slot]
        dots = (unit_q * class_sum).sum(dim=1)
        if square:  # less the query's own term <u_i, u_i>: 1, or 0 for a row of zeros
            dots = dots - (unit_q * unit_q).sum(dim=1)
        total = dots - positives.to(dots.dtype)  # s = (cos - 1) / T
    else:
        centre = euclidean_centre(queries, None if square else keys)
        q = queries - centre
        k = q if square else keys - centre
        class_count = torch.zeros(k.shape[0], dtype=k.dtype, device=k.device).index_add(
            0, key_slot, torch.ones_like(k[:, 0])
        )
        class_mean = torch.zeros_like(k).index_add(0, key_slot, k) / class_count.clamp_min(1)[:, None]
        spread = torch.zeros_like(class_count).index_add(0, key_slot, (k - class_mean[key_slot]).square().sum(dim=1))
        # the query's own term is 0 in the square case: the class's sum over all its keys is right
        total = -(count.to(q.dtype) * (q - class_mean[slot]).square().sum(dim=1) + spread[slot])
    has = positives > 0
    mean = torch.where(has, total / torch.where(has, positives, 1).to(total.dtype), 0.0) / temperature
    return mean, positives


def form_rows(batch: Rows, temperature, form: str, *, distance: str, backend: str, precision: str, check_values: bool):
    """(per-query rows of a contrastive form, the number of each query's
    positives) with ``backend``, differentiable, with autocast off and the
    same value checks as ``row_losses`` (an overflow shows as a NaN row).
    ``form``: ``"supcon"`` (L_out: lse_all from the backend less the mean
    positive logit in O(b d), ``positive_logit_means``), or the
    backend's own eager path for the call where it has one."""
    name, inputs, options, points, given = _backend_call(
        batch, temperature, distance=distance, eps=0.0, backend=backend, precision=precision
    )
    queries = inputs.queries
    with _no_autocast(queries):
        eager = None if ops.forward_ad_active() else registry.BACKENDS[name].eager_form(form, inputs, options)
        if eager is not None:
            rows, positives = eager
        else:
            lse_all, _ = ops.statistics(inputs, options, name)
            mean_positive, positives = positive_logit_means(inputs, distance)
            rows = lse_all - mean_positive
    if check_values and validation.values_readable(queries, inputs.keys, given, batch.weight):
        validation.check_values(
            points, given, batch.weight, rows, distance=distance, used_temperature=inputs.temperature
        )
    return rows, positives


def _reduce(rows: torch.Tensor, counted: torch.Tensor, weight: torch.Tensor | None, batch: Rows, reduction: str):
    rows = torch.where(counted, rows, 0.0)
    if reduction == "none":
        return rows.reshape(batch.shape)
    weight = counted.to(rows.dtype) if weight is None else torch.where(counted, weight, 0.0)
    total = (rows * weight).sum() if reduction == "mean" else rows.sum()
    if reduction == "sum":
        return total
    count = weight.sum()
    return total / torch.where(count > 0, count, 1.0)


def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.1,
    *,
    keys: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    distance: str = "cosine",
    reduction: str = "mean",
    backend: str = "auto",
    precision: str = "tf32x3",
    check_values: bool = True,
) -> torch.Tensor:
    """SupCon's L_out: per row, ``logsumexp_j s_ij - mean_{p in P(i)} s_ip``
    (the module docstring), on ``backend``'s log-sum-exps.

    ``reduction``: ``"mean"`` over the rows that have a positive (the others
    have no term), ``"sum"``, or ``"none"`` (z's leading shape; 0 for a row
    without a positive).  The other arguments are ``soft_nearest_neighbor_loss``'s.
    """
    _check(distance, reduction, backend, precision)
    batch = prepare_rows(z, labels, keys, key_labels)
    rows, positives = form_rows(
        batch,
        temperature,
        "supcon",
        distance=distance,
        backend=backend,
        precision=precision,
        check_values=check_values,
    )
    return _reduce(rows, positives > 0, None, batch, reduction)


def _pair_terms(queries, query_labels, query_ids, keys, key_labels, temperature, distance: str, square: bool):
    """(sum over the block's rows' positive pairs of their terms, their number)."""
    logits = -pairwise_distance(queries, keys, distance) / temperature
    same = query_labels[:, None] == key_labels[None, :]
    if square:
        other = query_ids[:, None] != torch.arange(keys.shape[0], device=keys.device)[None, :]
        same = same & other
        negative = ~same & other
    else:
        negative = ~same
    has_negative = negative.any(dim=1, keepdim=True)
    # rows without a negative: a stand-in of zeros, selected away below (no -inf in the log-sum-exp's
    # backward, where exp(-inf - -inf) is a NaN even when multiplied by 0)
    negatives = torch.where(negative, logits, -torch.inf)
    lse_negative = torch.logsumexp(torch.where(has_negative, negatives, 0.0), dim=1, keepdim=True)
    # log(exp(s_ip) + sum_n exp(s_in)) - s_ip; 0 without negatives (PML's value there too)
    terms = torch.where(has_negative, torch.logaddexp(logits, lse_negative) - logits, 0.0)
    return torch.where(same, terms, 0.0).sum(dim=1), same.sum(dim=1)


def ntxent_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 0.07,
    *,
    keys: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    distance: str = "cosine",
    reduction: str = "mean",
    backend: str = "auto",
    precision: str = "tf32x3",
    check_values: bool = True,
    block_rows: int = PAIR_BLOCK_ROWS,
) -> torch.Tensor:
    """NT-Xent per positive pair: each pair (i, p) of a row and one of its
    positives has the term ``log(exp(s_ip) + sum_{n not in P(i)} exp(s_in)) - s_ip``
    (the module docstring).

    ``reduction``: ``"mean"`` over the positive pairs (pytorch-metric-learning's),
    ``"sum"``, or ``"none"``: per row, the sum of its pairs' terms.  Computed
    in blocks of ``block_rows`` rows (O(block_rows x keys) memory, forward and
    backward); the arguments are otherwise ``soft_nearest_neighbor_loss``'s.
    Where every row has exactly one positive by the batch's form (two views
    without labels, or keys without labels, key i a view of sample i) the
    pair's term is the row's L_in, computed by ``backend`` (``precision``
    for the fused kernels) with its O(b d) memory.
    """
    _check(distance, reduction, backend, precision)
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    one_positive = labels is None and (
        (keys is None and z.dim() == 3 and z.shape[1] == 2) or (keys is not None and keys.dim() == 2 and z.dim() == 2)
    )
    if one_positive:
        return soft_nearest_neighbor_loss(
            z,
            None,
            temperature,
            keys=keys,
            key_labels=key_labels,
            distance=distance,
            eps=0.0,
            reduction=reduction,
            backend=backend,
            precision=precision,
            check_values=check_values,
        )
    batch = prepare_rows(z, labels, keys, key_labels)
    queries, keys_ = batch.queries, batch.keys
    dtype = compute_dtype(queries.dtype)
    given = temperature if isinstance(temperature, torch.Tensor) else None
    t = validation.check_temperature(temperature, queries.device, dtype)
    square = keys_ is None
    q = queries.to(dtype)
    k = q if keys_ is None else keys_.to(dtype)
    key_labels_ = batch.query_labels if square else batch.key_labels
    ids = torch.arange(q.shape[0], device=q.device)
    # torch.func's transforms refuse the saved-tensor hooks that recompute a block: there the
    # blocks are kept for the backward pass (b x keys memory)
    recompute = torch.compiler.is_compiling() or not torch._C._functorch.is_functorch_wrapped_tensor(q)
    sums, counts = [], []
    with _no_autocast(q):  # fp32 / fp64 whatever autocast would pick (a bf16 product loses the loss's digits)
        for start in range(0, q.shape[0], block_rows):
            part = slice(start, start + block_rows)
            args = (q[part], batch.query_labels[part], ids[part], k, key_labels_, t, distance, square)
            block = checkpoint(_pair_terms, *args, use_reentrant=False) if recompute else _pair_terms(*args)
            sums.append(block[0])
            counts.append(block[1])
    rows, pairs = torch.cat(sums), torch.cat(counts)
    if check_values and validation.values_readable(queries, keys_, given):
        points = {"z": queries} if keys_ is None else {"z": queries, "keys": keys_}
        validation.check_values(points, given, None, rows, distance=distance, used_temperature=t)
    if reduction == "none":
        return rows.reshape(batch.shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    n = pairs.sum()
    return total / torch.where(n > 0, n, 1).to(total.dtype)
