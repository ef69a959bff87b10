"""Shared inputs and the one comparison of a backend with the reference."""

from __future__ import annotations

import math
import zlib

import torch

from snnl.loss import ops, registry
from snnl.loss.backends import reference
from snnl.loss.options import NO_SELF_PAIR, Inputs, LossOptions
from snnl.loss.rowwise import compute_dtype, rows_loss

LABEL_PATTERNS = ("few_classes", "singletons", "one_class", "all_distinct", "large_negative")


def make_labels(pattern: str, b: int, generator: torch.Generator) -> torch.Tensor:
    if pattern == "few_classes":
        return torch.randint(0, 4, (b,), generator=generator)
    if pattern == "singletons":  # a few classes plus several classes of one member
        labels = torch.randint(0, 3, (b,), generator=generator)
        labels[: min(b, 5)] = torch.arange(100, 100 + min(b, 5))
        return labels
    if pattern == "one_class":
        return torch.full((b,), 7)
    if pattern == "all_distinct":
        return torch.randperm(b, generator=generator)
    if pattern == "large_negative":  # values far outside int32, and negative ones
        values = torch.tensor([-(2**40), -3, 0, 2**40 + 1, 2**62])
        return values[torch.randint(0, len(values), (b,), generator=generator)]
    raise ValueError(pattern)


def make_points(b: int, d: int, distance: str, dtype, generator: torch.Generator) -> torch.Tensor:
    z = torch.randn(b, d, generator=generator, dtype=torch.float64)
    if distance == "euclidean":
        # Keep typical squared distances O(1) so no temperature saturates the loss.
        z = z / d**0.5
    return z.to(dtype)


def backend_rows(backend: str, distance: str, eps: float):
    """Per-row losses of ``backend`` through its operators (the path of the
    public function below its checks), the inputs cast as the function casts
    them: rows(z, labels, t, keys=None, key_labels=None, self_offset=-1)."""
    entry = registry.BACKENDS[backend]

    def rows(z, labels, t, keys=None, key_labels=None, self_offset=NO_SELF_PAIR):
        dtype = compute_dtype(z.dtype)
        if entry.casts_inputs:
            z, keys = z.to(dtype), None if keys is None else keys.to(dtype)
        inputs = Inputs(z, keys, labels, key_labels, t.to(dtype))
        options = LossOptions(0 if keys is None else self_offset, distance, eps, "tf32x3")
        return ops.rows(inputs, options, backend)[0]

    return rows


def rows_and_grads(fn, z, labels, temperature, weights):
    """Per-row losses of ``fn`` and the gradients of sum(weights * finite rows)
    with respect to z and the temperature tensor."""
    z = z.detach().clone().requires_grad_(True)
    t = temperature.detach().clone().requires_grad_(True)
    rows = fn(z, labels, t)
    finite = torch.isfinite(rows)
    objective = torch.where(finite, rows * weights.to(rows.dtype), torch.zeros_like(rows)).sum()
    grad_z, grad_t = torch.autograd.grad(objective, [z, t], allow_unused=True)
    return rows.detach(), grad_z, grad_t


def temperature_gradient_scale(fn, z, labels, temperature, weights) -> float:
    """sum_i |w_i * d l_i / dT| in float64: the size of the terms whose sum is the
    T-gradient.  The sum can cancel to far less than its terms, and rounding
    errors scale with the terms, so this is the yardstick for its error."""
    t = temperature.detach().double()
    _, per_row = torch.func.jvp(lambda s: fn(z.detach().double(), labels, s), (t,), (torch.ones_like(t),))
    finite = torch.isfinite(per_row)
    return float((weights.abs() * torch.where(finite, per_row, torch.zeros_like(per_row)).abs()).sum())


def assert_close_rows(actual, expected, rtol, atol):
    assert torch.equal(torch.isfinite(actual), torch.isfinite(expected)), "inf pattern differs"
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite].double(), expected[finite].double(), rtol=rtol, atol=atol)
    assert torch.equal(actual[~finite], expected[~finite])


def assert_close_scaled(actual, expected, rtol, row_floor=None):
    """Elementwise closeness relative to the largest entry (gradients mix large and
    tiny entries; the tiny ones are sums of cancelling terms).  Gradients that are
    zero in exact arithmetic (e.g. through the normalisation of 1-d points) come
    out as rounding noise, hence the floor on the scale; ``row_floor`` raises it
    per row to the size of the terms that cancel there (``normalisation_terms``)."""
    expected = expected.double()
    scale = expected.abs().max().clamp_min(1e-6)
    if row_floor is None:
        torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=rtol * float(scale))
        return
    tolerance = rtol * (expected.abs() + torch.maximum(scale, row_floor.double())[:, None])
    error = (actual.double() - expected).abs()
    worst = int(torch.argmax(error - tolerance))
    assert bool((error <= tolerance).all()), (
        f"gradient differs at {divmod(worst, expected.shape[1])}: {actual.flatten()[worst]} vs "
        f"{expected.flatten()[worst]} (tolerance {tolerance.flatten()[worst]:.3g})"
    )


def _unit_rows_loss(x, labels, temperature, eps):
    """The cosine loss of rows already of unit length, without normalising
    them again: the reference's formula with x as given."""
    logits = (x @ x.T - 1.0) / temperature
    eye = torch.eye(x.shape[0], dtype=torch.bool)
    logits = logits.masked_fill(eye, -math.inf)
    same = (labels[:, None] == labels[None, :]) & ~eye
    has_same = same.any(1)
    same_logits = logits.masked_fill(~same, -math.inf).masked_fill(~has_same[:, None], 0.0)
    lse_same = torch.where(has_same, torch.logsumexp(same_logits, 1), -math.inf)
    return rows_loss(torch.logsumexp(logits, 1), lse_same, eps)


def normalisation_terms(z, labels, temperature, weights, eps):
    """Per row, |d objective / d x_i| / |z_i| for the unit rows x = z / |z| of
    the cosine distance: the size of the terms that the normalisation's
    Jacobian (I - x x^T) / |z| cancels.  Rounding errors, the reference's
    included, scale with this, not with the result (for 1-d points the exact
    gradient is 0 and the reference returns noise)."""
    x = torch.nn.functional.normalize(z.detach().double(), dim=1).requires_grad_(True)
    rows = _unit_rows_loss(x, labels, temperature.detach().double(), eps)
    objective = torch.where(torch.isfinite(rows), rows * weights, torch.zeros_like(rows)).sum()
    (grad_x,) = torch.autograd.grad(objective, [x])
    return grad_x.abs().amax(dim=1) / z.detach().double().norm(dim=1)


FORMS = ("batch", "keys", "slices")


def _objective_grads(fn, leaves, weights):
    """(per-row losses, gradients of sum(weights * finite rows) with respect to ``leaves``)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in leaves]
    rows = fn(*leaves)
    finite = torch.isfinite(rows)
    objective = torch.where(finite, rows * weights.to(rows.dtype), torch.zeros_like(rows)).sum()
    return rows.detach(), torch.autograd.grad(objective, leaves, allow_unused=True)


def compare(
    backend, b, d, pattern, temperature, distance, eps, dtype=torch.float64, rtol=1e-9, grad_rtol=1e-8, form="batch"
):
    """``backend``'s per-row losses and their gradients (the points and a
    learned T) against the float64 reference on the same rounded inputs, in
    one of the ``FORMS``: the batch against itself, queries against other
    keys (a memory bank: gradients to both), or the batch in three slices
    each against the whole batch with its offset (torch.distributed's use).
    The default tolerances are float64's: the backends differ from the
    reference only in summation order (1e-9 relative for the losses, 1e-8
    of the largest gradient entry are ample for sums over a few hundred
    terms at T >= 0.01, whose logits reach 200 in magnitude); float32 callers
    pass a few hundred ulps."""
    # crc32, not hash(): str hashes change from process to process
    g = torch.Generator().manual_seed(zlib.crc32(repr((b, d, pattern, temperature, distance, eps, form)).encode()))
    z = make_points(b, d, distance, dtype, g)
    labels = make_labels(pattern, b, g)
    t = torch.tensor(temperature, dtype=compute_dtype(dtype))
    weights = torch.randn(b, generator=g, dtype=torch.float64)
    if form == "keys":
        keys = make_points(b + 7, d, distance, dtype, g)
        key_labels = make_labels(pattern, b + 7, g)

        def rows_with(name):
            return lambda z, k, t: backend_rows(name, distance, eps)(z, labels, t, keys=k, key_labels=key_labels)

        leaves = [z, keys, t]
    else:

        def rows_with(name):
            rows = backend_rows(name, distance, eps)
            if form == "batch" or name == "reference":
                return lambda z, t: rows(z, labels, t)
            cuts = [0, b // 3, b // 3 + 1, b]  # uneven, one of a single row
            return lambda z, t: torch.cat(
                [
                    rows(z[i:j], labels[i:j], t, keys=z, key_labels=labels, self_offset=i)
                    for i, j in zip(cuts[:-1], cuts[1:])
                    if j > i
                ]
            )

        leaves = [z, t]
    expected = _objective_grads(rows_with("reference"), [x.double() for x in leaves], weights)
    actual = _objective_grads(rows_with(backend), leaves, weights)
    assert_close_rows(actual[0], expected[0], rtol=rtol, atol=rtol)
    floor = normalisation_terms(z, labels, t, weights, eps) if distance == "cosine" and form != "keys" else None
    for got, want in zip(actual[1][:-1], expected[1][:-1]):  # the points
        assert_close_scaled(got, want, grad_rtol, floor if got.shape[0] == b else None)
    # dL/dT = sum_i w_i dl_i/dT cancels: judge its error against the terms
    oracle = rows_with("reference")
    t_scale = temperature_gradient_scale(lambda z, labels, s: oracle(*leaves[:-1], s), z, labels, t, weights)
    torch.testing.assert_close(
        actual[1][-1].double(), expected[1][-1], rtol=grad_rtol, atol=grad_rtol * max(t_scale, 1e-6)
    )
    return actual


def reference_rows(z, labels, temperature, distance, eps, **kw):
    """The oracle's per-row losses (keys / key_labels / self_offset as ``reference.rows``)."""
    inputs = Inputs(z, kw.get("keys"), labels, kw.get("key_labels"), temperature)
    return reference.rows(inputs, LossOptions(kw.get("self_offset", 0), distance, eps, "tf32x3"))[0]
