"""``soft_nearest_neighbor_loss``: the forms of the loss, checks, dispatch, reduction."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from . import ops, registry, validation
from .options import NO_SELF_PAIR, Inputs, LossOptions
from .rowwise import compute_dtype


@dataclass
class Rows:
    """A batch as the backends see it: 2-D queries (and keys), one label each.

    ``shape``: the leading shape of the caller's ``z`` ((b,) or (b, views)),
    which ``reduction="none"`` returns; ``weight`` and ``counted`` (rows not
    ignored) per row, or None for all ones / all counted."""

    queries: torch.Tensor
    query_labels: torch.Tensor
    keys: torch.Tensor | None
    key_labels: torch.Tensor | None
    weight: torch.Tensor | None
    counted: torch.Tensor | None
    shape: tuple[int, ...]


def _views(x, labels):
    """(n * views, d) points and one label each: a (n, views, d) batch's
    views are rows of their own, with their sample's label."""
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1]), labels.repeat_interleave(x.shape[1])
    return x, labels


def prepare_rows(z, labels, keys=None, key_labels=None, weight=None, ignore_index=None, first_id: int = 0) -> Rows:
    """The checks of everything but the options and the values, and the batch
    as ``Rows``.  ``first_id``: the first sample id when ``labels`` is None
    (under torch.distributed, this process's first row of the global batch)."""
    validation.check_points(z, "z")
    if keys is None and key_labels is not None:
        raise ValueError("key_labels were given without keys")
    sample_ids = labels is None
    if sample_ids:  # each sample's views are its positives: sample ids as labels
        if keys is None and (z.dim() != 3 or z.shape[1] < 2):
            raise ValueError(
                f"labels may be left out only for a multi-view batch (samples, views >= 2, features), "
                f"where each sample's views are its positives, or with keys (key i a view of sample "
                f"i); z has shape {tuple(z.shape)}: pass labels"
            )
        labels = torch.arange(first_id, first_id + z.shape[0], device=z.device)
    else:
        validation.check_labels(labels, "labels", z.shape[0], "z", z.device)
    queries, query_labels = _views(z, labels)
    if keys is None and queries.shape[0] < 2:
        raise ValueError(
            f"z must hold at least 2 rows (the loss compares rows with each other), got {queries.shape[0]}"
        )
    flat_keys = None
    if keys is not None:
        validation.check_points(keys, "keys")
        if keys.shape[-1] != z.shape[-1] or keys.dtype != z.dtype or keys.device != z.device:
            raise ValueError(
                f"keys must have z's features ({z.shape[-1]}), dtype ({z.dtype}) and device ({z.device}), "
                f"got {keys.shape[-1]} features, {keys.dtype}, {keys.device}"
            )
        if sample_ids:
            if key_labels is not None:
                raise ValueError(
                    "labels were left out (each sample's views are its positives) but key_labels "
                    "were given: give both or neither"
                )
            if keys.shape[0] != z.shape[0]:
                raise ValueError(
                    f"without labels, key i is a view of sample i: keys must hold z's {z.shape[0]} "
                    f"samples, got {keys.shape[0]}"
                )
            flat_keys, key_labels = _views(keys, torch.arange(first_id, first_id + keys.shape[0], device=keys.device))
        else:
            if key_labels is None:
                raise ValueError("keys need key_labels (one class id per key)")
            validation.check_labels(key_labels, "key_labels", keys.shape[0], "keys", keys.device)
            flat_keys, key_labels = _views(keys, key_labels)
    shape = tuple(z.shape[:-1])
    flat_weight = None
    if weight is not None:
        validation.check_weight(weight, shape, z.device)
        flat_weight = (weight if weight.shape == shape else weight[:, None].expand(shape)).reshape(-1)
    counted = None if ignore_index is None else query_labels != ignore_index
    return Rows(queries, query_labels, flat_keys, key_labels, flat_weight, counted, shape)


def _backend_call(batch: Rows, temperature, *, distance, eps, backend, precision, self_offset=NO_SELF_PAIR):
    """(the backend's name, its Inputs and LossOptions, the points as given,
    the temperature as given when a tensor) for one call on ``batch``."""
    queries, keys = batch.queries, batch.keys
    dtype = compute_dtype(queries.dtype)
    given = temperature if isinstance(temperature, torch.Tensor) else None  # a number is checked already
    temperature = validation.check_temperature(temperature, queries.device, dtype)
    chosen = registry.resolve(backend, queries)
    chosen.check_usable(queries)
    points = {"z": queries} if keys is None else {"z": queries, "keys": keys}
    if chosen.casts_inputs:
        queries = queries.to(dtype)
        keys = None if keys is None else keys.to(dtype)
    inputs = Inputs(queries, keys, batch.query_labels, batch.key_labels, temperature)
    options = LossOptions(
        self_offset=0 if keys is None else self_offset, distance=distance, eps=eps, precision=precision
    )
    return chosen.name, inputs, options, points, given


def row_losses(
    batch: Rows,
    temperature,
    *,
    distance: str,
    eps: float,
    backend: str,
    precision: str,
    check_values: bool,
    reduction: str,
    self_offset: int = NO_SELF_PAIR,
):
    """(per-row losses in the compute dtype, whether each row has a same-class
    key or None when ``reduction`` does not need it): the backend's rows,
    with autocast off, and the value checks (``validation.check_values``)."""
    name, inputs, options, points, given = _backend_call(
        batch, temperature, distance=distance, eps=eps, backend=backend, precision=precision, self_offset=self_offset
    )
    queries = inputs.queries
    # the loss's own arithmetic is fp32 (fp64) whatever autocast would pick
    with torch.autocast(queries.device.type, enabled=False) if _autocast_on(queries) else contextlib.nullcontext():
        rows, has_positive, values_checked = ops.rows(
            inputs, options, name, with_positives=reduction == "mean_over_positives"
        )
    if check_values and validation.values_readable(queries, inputs.keys, given, batch.weight):
        # the inputs, and the rows for an overflow of the logits: one read, after the computation
        # (the points and rows not again where the path found them in range)
        validation.check_values(
            {} if values_checked else points,
            given,
            batch.weight,
            None if values_checked else rows,
            distance=distance,
            used_temperature=inputs.temperature,
        )
    return rows, has_positive


def _autocast_on(x: torch.Tensor) -> bool:
    return x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)


def reduction_terms(rows, has_positive, batch: Rows, reduction: str):
    """(sum over the counted rows of weight * loss, the counted weight): the
    mean is their ratio.  Counted: not +inf (eps = 0 leaves rows without a
    same-class key out as +inf; a NaN stays in, so that a NaN input is a NaN
    loss, never a quietly smaller one), not ``ignore_index``, and for
    ``mean_over_positives`` with a same-class key.  Rows not counted are
    selected away, never multiplied by 0: they get no gradient and no NaN."""
    counted = rows != math.inf
    if batch.counted is not None:
        counted = counted & batch.counted
    if reduction == "mean_over_positives":
        counted = counted & has_positive
    if batch.weight is None:
        return torch.where(counted, rows, 0.0).sum(), counted.sum()
    weight = batch.weight.to(rows.dtype)
    return torch.where(counted, rows * weight, 0.0).sum(), torch.where(counted, weight, 0.0).sum()


def reduce(rows, has_positive, batch: Rows, reduction: str, eps: float | None = None):
    """The reduced loss (``reduction_terms``).  ``eps`` > 0: no row is +inf,
    so an unweighted mean over every row is ``rows.mean()`` (one operation
    where the general mean takes six, forward and backward)."""
    if reduction == "mean" and eps and batch.weight is None and batch.counted is None:
        return rows.mean()
    if reduction == "none":
        out = rows
        if batch.weight is not None:
            weight = batch.weight.to(rows.dtype)
            out = torch.where(weight == 0, 0.0, rows * weight)  # weight 0: no loss, not inf * 0
        if batch.counted is not None:
            out = torch.where(batch.counted, out, 0.0)  # ignored rows: 0, like torch's ignore_index
        return out.reshape(batch.shape)
    total, weight = reduction_terms(rows, has_positive, batch, reduction)
    if reduction == "sum":
        return total
    # no row counted: 0 (there is no same-class pair to pull together); a
    # count of rows is an integer, >= 1 when any row counts
    return total / (weight.clamp_min(1) if batch.weight is None else torch.where(weight > 0, weight, 1.0))


def soft_nearest_neighbor_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
    *,
    keys: torch.Tensor | None = None,
    key_labels: torch.Tensor | None = None,
    distance: str = "cosine",
    eps: float = 1e-5,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
    ignore_index: int | None = None,
    backend: str = "auto",
    precision: str = "tf32x3",
    check_values: bool = True,
) -> torch.Tensor:
    """Soft nearest neighbor loss (Frosst, Papernot & Hinton, 2019).

    For query rows z_i with labels y_i, keys k_j with labels y'_j and logits
    s_ij = -d(z_i, k_j) / T:

        l_i = -log(eps + N_i / (eps + S_i)),
        S_i = sum_j exp(s_ij),   N_i = sum_{j: y'_j = y_i} exp(s_ij).

    The keys are the batch itself unless given; then the pair (i, i) is left
    out exactly.

    Args:
        z: the batch, (b, d) floating point, or (b, views, d): several views
            of each sample (augmentations), each view a row.
        labels: (b,) integer class ids on z's device; views share their
            sample's.  Left out for a multi-view batch, each sample's views
            are its positives and every other sample's views its negatives
            (the SimCLR / NT-Xent form; with labels, SupCon's).
        temperature: T > 0: a number, or a 0-dim or shape-(1,) tensor; a
            tensor that requires grad receives a gradient (a learned T).
        keys, key_labels: reference points to compare the queries ``z`` with
            instead of the batch itself (a memory bank, a fixed reference set),
            (m, d) or (m, views, d), and their labels.  Nothing is left out:
            the keys are not the queries.  Without labels, key i is a view of
            sample i (``key_labels`` not given).
        distance: ``"cosine"`` (1 - cosine similarity) or ``"euclidean"``
            (squared Euclidean distance).
        eps: the paper authors' stability constant (1e-5).  With ``eps=0`` the
            loss is logsumexp_all - logsumexp_same; rows with no same-class key
            are then ``+inf`` and left out of every reduction.
        reduction: ``"mean"`` (over the rows; with eps > 0 a row without a
            same-class key counts its constant -log(eps), the authors'
            convention), ``"mean_over_positives"`` (over the rows that have
            one: TF Similarity's and pytorch-metric-learning's), ``"sum"`` or
            ``"none"`` (z's leading shape, weights applied).
        weight: per-row weights, (b,) or for a multi-view batch (b,) or
            (b, views): the mean is sum(w l) / sum(w) over the rows counted.
        ignore_index: a label whose rows have no loss of their own (unlabelled
            rows) but still count among the other rows' keys, as negatives.
        backend: ``"auto"`` (``"triton"`` for CUDA tensors when Triton is
            installed, else ``"blocked"``), or a name in
            ``snnl.loss.registry.BACKENDS``: ``"reference"`` (b x b matrices,
            the oracle), ``"blocked"`` (the CPU path), ``"triton"`` (the fused
            kernels; CPU tensors only under TRITON_INTERPRET=1).
        precision: the fused kernels' fp32 products on the tensor cores:
            ``"tf32x3"`` (three TF32 products: fp32-level accuracy, the
            default), ``"tf32"`` (one: about 1e-3 relative error in the dot
            products) or ``"ieee"`` (fp32 FMA, no tensor cores).  The other
            backends compute in full fp32 (or fp64) and ignore it.
        check_values: check the points for NaN/Inf, a tensor T for T > 0 and
            the weights for w >= 0 (one host read per call, a synchronisation
            on a GPU).  Skipped by itself under ``torch.compile``, CUDA-graph
            capture, fake tensors and ``torch.func``, where a NaN input gives a
            NaN loss.

    Returns:
        The reduced loss, or the per-row losses for ``reduction="none"``: fp64
        for fp64 input, fp32 otherwise, also under autocast (the loss's
        arithmetic runs with autocast off; half inputs are accumulated in fp32).

    Works as a PyTorch operator: ``torch.compile(fullgraph=True)`` with no
    graph break, CUDA graphs (no synchronisation with ``check_values=False``
    or inside compiled code), fake and meta tensors, ``torch.export``,
    ``torch.func.grad`` / ``vmap`` / ``jvp``, and exact second-order
    gradients on every backend (see ``snnl.loss.ops``).
    """
    eps = validation.check_options(distance, eps, reduction, backend, precision, ignore_index)
    batch = prepare_rows(z, labels, keys, key_labels, weight, ignore_index)
    rows, has_positive = row_losses(
        batch,
        temperature,
        distance=distance,
        eps=eps,
        backend=backend,
        precision=precision,
        check_values=check_values,
        reduction=reduction,
    )
    return reduce(rows, has_positive, batch, reduction, eps)
