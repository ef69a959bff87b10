"""Numerics on real codes, every backend, float32 against the float64 truth
of the same (rounded) inputs: points that share an offset (the Euclidean
distance is translation-invariant, and so is its computation: the points
are centred first), rows of zeros (no direction: cosine distance 1 to every
point, no gradient), points whose distance / T overflows float32 (refused in
eager calls, NaN in unchecked ones, never a quiet number), and the cosine
distance at any norm of the fp32 range."""

import math

import pytest
import torch

from snnl import soft_nearest_neighbor_loss

from .loss_cases import assert_close_scaled


def _batch(seed=0, b=96, d=70):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, 6, (b,), generator=g)


def _loss_and_grad(z, labels, temperature, backend, **options):
    z = z.detach().clone().requires_grad_(True)
    loss = soft_nearest_neighbor_loss(z, labels, temperature, backend=backend, **options)
    (grad,) = torch.autograd.grad(torch.where(torch.isfinite(loss), loss, 0.0).sum(), z)
    return loss.detach(), grad


def _truth(z, labels, temperature, **options):
    return _loss_and_grad(z.double(), labels, temperature, "reference", **options)


@pytest.mark.parametrize(
    "offset,spread,temperature", [(100.0, 0.1, 0.1), (1000.0, 0.1, 1.0), (1e4, 0.1, 1.0), (1e4, 1.0, 0.5)]
)
def test_euclidean_codes_that_share_an_offset(backend, offset, spread, temperature):
    # 13% error at offset 100 / T = 0.1 before the points were centred
    z, labels = _batch()
    z = (z * spread + offset).float()
    loss, grad = _loss_and_grad(z, labels, temperature, backend, distance="euclidean")
    expected, expected_grad = _truth(z, labels, temperature, distance="euclidean")
    torch.testing.assert_close(loss.double(), expected, rtol=2e-5, atol=0)
    assert_close_scaled(grad, expected_grad, 1e-3)


def test_the_median_centre_keeps_an_outlier_from_the_others(backend):
    # one point 1e6 away: a mean centre would move every other point 1e4 from
    # the origin and their distances would cancel again; the median does not
    z, labels = _batch(1, b=64, d=8)
    z = (z * 0.1).float()
    z[0] += 1e6
    loss, grad = _loss_and_grad(z, labels, 0.1, backend, distance="euclidean", reduction="none")
    expected, _ = _truth(z, labels, 0.1, distance="euclidean", reduction="none")
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_a_row_of_zeros(backend, distance):
    # cosine: no direction, so cosine distance 1 to every point and a zero
    # gradient (it was about 2.4e10 through F.normalize's floor); Euclidean: an
    # ordinary point at the origin
    z, labels = _batch(2, b=48, d=16)
    z[5] = 0.0
    loss, grad = _loss_and_grad(z, labels, 0.5, backend, distance=distance)
    expected, expected_grad = _truth(z, labels, 0.5, distance=distance)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-6, atol=0)
    assert_close_scaled(grad, expected_grad, 1e-4)
    assert grad.abs().max() < 1.0
    if distance == "cosine":
        assert not grad[5].any()
        rows = soft_nearest_neighbor_loss(z.double(), labels, 0.5, backend="reference", reduction="none", eps=0.0)
        others = torch.arange(48) != 5
        same = (labels == labels[5]) & others
        # distance 1 (logit -1 / T) to every other point: its loss is log(n - 1) - log(same-class count)
        assert rows[5].item() == pytest.approx(math.log(others.sum().item()) - math.log(same.sum().item()))


@pytest.mark.parametrize("scale", [1e19, 1e20, 1e30, 1e-30, 1e-38])
def test_cosine_at_any_norm(backend, scale):
    # 1.3091 at |z| ~ 1 was 1.442 at 1e19, 1.0986 at 1e20 and 1.1008 at 1e-30
    z, labels = _batch(3, b=64, d=24)
    at_one, grad_at_one = _loss_and_grad(z, labels, 0.3, backend)
    scaled = (z.double() * scale).float()
    loss, grad = _loss_and_grad(scaled, labels, 0.3, backend)
    expected, expected_grad = _truth(scaled, labels, 0.3)
    torch.testing.assert_close(loss, at_one, rtol=2e-6, atol=0)
    torch.testing.assert_close(loss.double(), expected, rtol=2e-6, atol=0)
    if scale <= 1e30:  # beyond, the gradient (about 1 / |z|) is below float32's range
        assert_close_scaled(grad, expected_grad, 1e-4)


def _far_apart():
    z, labels = _batch(4, b=16, d=4)
    z[0] *= 1e20  # squared distances ~1e40: beyond float32
    labels[0] = labels[1]
    return z, labels


def test_an_overflowing_distance_is_refused_in_eager_calls(backend):
    z, labels = _far_apart()
    with pytest.raises(ValueError, match="overflow float32.*1.8e\\+19 apart.*float64"):
        soft_nearest_neighbor_loss(z, labels, 1.0, distance="euclidean", backend=backend)
    # in float64 the same points are fine, and agree with the truth
    expected, _ = _truth(z, labels, 1.0, distance="euclidean")
    assert torch.isfinite(expected)


@pytest.mark.parametrize("reduction", ["mean", "mean_over_positives", "none"])
def test_an_overflowing_distance_is_nan_when_values_are_not_checked(backend, reduction):
    # (compiled code and check_values=False read no values): NaN, never a quiet
    # number (it was a finite loss with a NaN gradient, and mean_over_positives
    # gave 11.51 on reference and 0.0 on blocked)
    z, labels = _far_apart()
    z = z.requires_grad_(True)
    loss = soft_nearest_neighbor_loss(
        z, labels, 1.0, distance="euclidean", backend=backend, check_values=False, reduction=reduction
    )
    if reduction == "none":
        assert torch.isnan(loss[0]) and torch.isfinite(loss[1:]).all()
        expected, _ = _truth(z.detach(), labels, 1.0, distance="euclidean", reduction="none")
        torch.testing.assert_close(loss[1:].detach().double(), expected[1:], rtol=1e-4, atol=1e-5)
    else:
        assert torch.isnan(loss)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isnan(grad).any()  # no finite-looking gradient either
