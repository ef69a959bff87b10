"""Shared inputs and comparisons for the loss tests."""

from __future__ import annotations

import torch

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
        f"{expected.flatten()[worst]} (tolerance {tolerance.flatten()[worst]:.3g})")


def normalisation_terms(z, labels, temperature, weights, eps):
    """Per row, |d objective / d x_i| / |z_i| for the unit rows x = z / |z| of
    the cosine distance: the size of the terms that the normalisation's
    Jacobian (I - x x^T) / |z| cancels.  Rounding errors, the reference's
    included, scale with this, not with the result (for 1-d points the exact
    gradient is 0 and the reference returns noise).  d objective / d x comes
    from ``chunked``, which takes the unit rows as they are."""
    from snnl.loss.chunked import chunked_rows

    x = torch.nn.functional.normalize(z.detach().double(), dim=1).requires_grad_(True)
    rows = chunked_rows(x, labels, temperature.detach().double(), True, eps)
    objective = torch.where(torch.isfinite(rows), rows * weights, torch.zeros_like(rows)).sum()
    (grad_x,) = torch.autograd.grad(objective, [x])
    return grad_x.abs().amax(dim=1) / z.detach().double().norm(dim=1)
