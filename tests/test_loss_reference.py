"""The oracle itself: closed-form values, gradcheck, and the per-row algebra."""

import math

import pytest
import torch

from snnl import AnnealingTemperature, FixedTemperature, SNNLoss, soft_nearest_neighbor_loss
from snnl.loss.rowwise import row_coefficients, rows_loss

from .loss_cases import reference_rows


def test_closed_form_small_batch():
    # Cosine distances: d01 = 0, d02 = d12 = 2.  Row 2 has no same-class neighbour.
    z = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    eps, t = 1e-5, 1.0
    rows = soft_nearest_neighbor_loss(z, labels, t, eps=eps, reduction="none", backend="reference")
    s = 1.0 + math.exp(-2.0)
    expected = [-math.log(eps + 1.0 / (eps + s)), -math.log(eps + 1.0 / (eps + s)), -math.log(eps)]
    torch.testing.assert_close(rows, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_closed_form_euclidean():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([5, 5, 5])
    t = 0.5
    rows = soft_nearest_neighbor_loss(
        z, labels, t, distance="euclidean", eps=0.0, reduction="none", backend="reference"
    )
    # One class: N_i = S_i, so with eps = 0 every row's loss is exactly 0.
    torch.testing.assert_close(rows, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-15)
    labels = torch.tensor([0, 0, 1])
    rows = soft_nearest_neighbor_loss(
        z, labels, t, distance="euclidean", eps=0.0, reduction="none", backend="reference"
    )
    # Row 0: neighbours at squared distance 1 (same class) and 4 (other class).
    expected0 = math.log(math.exp(-1 / t) + math.exp(-4 / t)) - (-1 / t)
    assert rows[0].item() == pytest.approx(expected0, rel=1e-14)
    assert rows[2].item() == math.inf


@pytest.mark.parametrize("t", [0.01, 1.0, 100.0])
def test_self_pair_is_excluded_exactly(t):
    # Two identical points of different classes: row i sees only the other point,
    # so N_i = 0 and the loss is -log(eps) whatever the temperature.
    z = torch.ones(2, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    rows = soft_nearest_neighbor_loss(z, labels, t, reduction="none", backend="reference")
    torch.testing.assert_close(rows, torch.full((2,), -math.log(1e-5), dtype=torch.float64))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_gradcheck_reference(distance, eps):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0])  # label 3 is a singleton
    t = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def finite_rows(z, t):
        rows = reference_rows(z, labels, t, distance, eps)
        return torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows))

    assert torch.autograd.gradcheck(finite_rows, (z, t))


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 0.0])
def test_rows_loss_gradients_are_finite_and_zero_without_positives(eps):
    # The fast backends' backward operators take the gradients of the two
    # log-sum-exps from autograd of rows_loss: finite everywhere, and exactly 0
    # for a row with no same-class key (its lse_same is the constant -inf),
    # also at the second order
    g = torch.Generator().manual_seed(2)
    lse_all = (torch.randn(12, dtype=torch.float64, generator=g) * 30).requires_grad_(True)
    lse_same = lse_all.detach() - torch.rand(12, dtype=torch.float64, generator=g) * 40
    lse_same[3] = -math.inf
    lse_same.requires_grad_(True)
    grad_rows = torch.randn(12, dtype=torch.float64, generator=g)
    rows = rows_loss(lse_all, lse_same, eps)
    objective = torch.where(torch.isfinite(rows), rows * grad_rows, torch.zeros_like(rows)).sum()
    d_all, d_same = torch.autograd.grad(objective, [lse_all, lse_same], create_graph=True)
    assert torch.isfinite(d_all).all() and torch.isfinite(d_same).all()
    assert d_all[3] == 0 and d_same[3] == 0
    curvature = d_all.square().sum() + d_same.square().sum()
    if curvature.requires_grad:  # eps = 0: lse_all - lse_same, whose first derivatives are constants
        second = torch.autograd.grad(curvature, [lse_all, lse_same], allow_unused=True)
        assert all(s is None or torch.isfinite(s).all() for s in second)


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 0.0])
def test_row_coefficients_match_autograd(eps):
    g = torch.Generator().manual_seed(2)
    lse_all = (torch.randn(12, dtype=torch.float64, generator=g) * 30).requires_grad_(True)
    lse_same = lse_all.detach() - torch.rand(12, dtype=torch.float64, generator=g) * 40
    lse_same[3] = -math.inf
    lse_same.requires_grad_(True)
    grad_rows = torch.randn(12, dtype=torch.float64, generator=g)
    rows = rows_loss(lse_all, lse_same, eps)
    objective = torch.where(torch.isfinite(rows), rows * grad_rows, torch.zeros_like(rows)).sum()
    d_all, d_same = torch.autograd.grad(objective, [lse_all, lse_same])
    c_all, c_same = row_coefficients(lse_all.detach(), lse_same.detach(), eps, grad_rows)
    torch.testing.assert_close(c_all, d_all, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(c_same, d_same, rtol=1e-12, atol=1e-300)
    assert c_all[3] == 0 and c_same[3] == 0


def test_log_domain_survives_extreme_logits():
    # Far-apart Euclidean points at a small temperature: exp(-d/T) underflows to
    # 0 in a linear-domain implementation; the log domain keeps the exact value.
    z = torch.tensor([[0.0], [10.0], [10.5], [50.0]], dtype=torch.float32)
    labels = torch.tensor([0, 1, 0, 1])
    rows = soft_nearest_neighbor_loss(
        z, labels, 0.1, distance="euclidean", eps=0.0, reduction="none", backend="reference"
    )
    # Row 0: same-class neighbour at d = 110.25, other class at d = 100: l = logaddexp(-1000, -1102.5) + 1102.5
    expected0 = math.log1p(math.exp(-102.5)) + 102.5
    assert rows[0].item() == pytest.approx(expected0, rel=1e-6)
    assert torch.isfinite(rows).all()


def test_eps_zero_rows_left_out_of_mean_and_sum():
    z = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # rows 4 and 5 have no same-class neighbour
    rows = soft_nearest_neighbor_loss(z, labels, eps=0.0, reduction="none", backend="reference")
    assert torch.isinf(rows[4:]).all() and torch.isfinite(rows[:4]).all()
    mean = soft_nearest_neighbor_loss(z, labels, eps=0.0, backend="reference")
    total = soft_nearest_neighbor_loss(z, labels, eps=0.0, reduction="sum", backend="reference")
    torch.testing.assert_close(mean, rows[:4].mean())
    torch.testing.assert_close(total, rows[:4].sum())


def test_eps_zero_all_rows_left_out_gives_zero_loss_and_gradient():
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    loss = soft_nearest_neighbor_loss(z, torch.arange(5), eps=0.0, backend="reference")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_reductions_agree():
    z = torch.randn(20, 5)
    labels = torch.randint(0, 3, (20,))
    rows = soft_nearest_neighbor_loss(z, labels, reduction="none")
    torch.testing.assert_close(soft_nearest_neighbor_loss(z, labels, reduction="sum"), rows.sum())
    torch.testing.assert_close(soft_nearest_neighbor_loss(z, labels), rows.mean())


def test_unsupervised_single_class_loss_is_nearly_zero():
    # Dropping the same-class constraint (every point one class) makes N_i = S_i:
    # the loss is -log(eps + S/(eps + S)) ~ 0 and nearly constant.
    z = torch.randn(32, 8, dtype=torch.float64)
    rows = soft_nearest_neighbor_loss(z, torch.zeros(32, dtype=torch.long), 0.5, reduction="none")
    assert rows.abs().max() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_inputs_are_accumulated_in_fp32(dtype):
    z = torch.randn(16, 8)
    labels = torch.randint(0, 3, (16,))
    loss = soft_nearest_neighbor_loss(z.to(dtype), labels)
    assert loss.dtype == torch.float32
    ref = soft_nearest_neighbor_loss(z.to(dtype).double(), labels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_learned_temperature_gets_gradient():
    module = SNNLoss(2.0, learn_temperature=True)
    z = torch.randn(16, 4)
    labels = torch.randint(0, 2, (16,))
    module(z, labels).backward()
    assert module.log_temperature.grad is not None and torch.isfinite(module.log_temperature.grad)
    assert module.temperature.item() == pytest.approx(2.0)


def test_module_matches_functional_and_overrides_temperature():
    z = torch.randn(16, 4)
    labels = torch.randint(0, 2, (16,))
    module = SNNLoss(0.5, distance="euclidean", reduction="sum")
    torch.testing.assert_close(
        module(z, labels), soft_nearest_neighbor_loss(z, labels, 0.5, distance="euclidean", reduction="sum")
    )
    torch.testing.assert_close(
        module(z, labels, 2.0), soft_nearest_neighbor_loss(z, labels, 2.0, distance="euclidean", reduction="sum")
    )
    assert "learn_temperature=False" in repr(module)


def test_temperature_schedules():
    anneal = AnnealingTemperature()
    assert anneal(0) == 1.0
    assert anneal(1) == pytest.approx(2**-0.55)
    assert anneal(49) == pytest.approx(50**-0.55)
    assert AnnealingTemperature(eta=2.0, gamma=1.0)(2) == 0.25
    assert FixedTemperature(0.3)(10) == 0.3
    with pytest.raises(ValueError, match="epoch"):
        anneal(-1)
    with pytest.raises(ValueError, match="eta"):
        AnnealingTemperature(eta=0.0)
    with pytest.raises(ValueError, match="value"):
        FixedTemperature(-1.0)
