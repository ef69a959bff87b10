"""The CPU path's eager one-tile code: the square calls with their own
backward pass (``blocked.lean_rows``): the reference's losses and gradients
over the grid, the calls it hands on (and that those are right), its second
order; and SupCon's L_out from one matrix of logits (``lean.supcon_rows``)."""

import gc

import pytest
import torch

from snnl import soft_nearest_neighbor_loss
from snnl.loss.backends.blocked import lean_rows

from .loss_cases import LABEL_PATTERNS, compare


@pytest.fixture
def paths(monkeypatch):
    """Counts the calls ``lean_rows`` served and those it handed on."""
    taken = {"served": 0, "handed on": 0}
    original = lean_rows._pairs

    def spy(inputs, options, *form):
        computed = original(inputs, options, *form)
        taken["handed on" if computed is None else "served"] += 1
        return computed

    monkeypatch.setattr(lean_rows, "_pairs", spy)
    return taken


@pytest.mark.parametrize("pattern", LABEL_PATTERNS)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_equals_the_reference_fp64(paths, pattern, distance, eps, temperature):
    # the rows, the points' gradient and a learned T's, weighted rows
    compare("blocked", 37, 6, pattern, temperature, distance, eps)
    assert paths["served"] >= 1 and paths["handed on"] == 0


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("b,d", [(64, 70), (256, 500), (520, 1000)])  # the last: wide points, above one tile
def test_fp32_is_within_rounding_of_the_fp64_truth(paths, distance, b, d):
    compare("blocked", b, d, "few_classes", 0.5, distance, 1e-5, torch.float32, rtol=2e-5, grad_rtol=2e-4)
    assert paths["served"] >= 1 and paths["handed on"] == 0


def test_supcon_zero_row_goes_to_the_formula_and_is_right(paths):
    from snnl.loss import supcon_loss

    z, y, t, _ = _case("zero row")
    got = z.double().requires_grad_(True)
    supcon_loss(got, y, t, backend="blocked").backward()
    truth = z.double().requires_grad_(True)
    supcon_loss(truth, y, t, backend="reference").backward()
    torch.testing.assert_close(got.grad, truth.grad, rtol=1e-9, atol=1e-12)
    assert paths == {"served": 0, "handed on": 1}


def _case(name):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(40, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    t, distance = 0.5, "cosine"
    if name == "zero row":
        z[3] = 0.0
    elif name == "huge norms":
        z = z * 1e19
    elif name == "tiny norms":
        z = z * 1e-30
    elif name == "far same-class points":  # cosine sums at the shift 0 below exp(-FAR)
        t = 0.01
    elif name == "shared offset":
        z, distance = z * 0.1 + 100.0, "euclidean"
    return z, y, t, distance


@pytest.mark.parametrize("name", ["zero row", "huge norms", "tiny norms", "far same-class points", "shared offset"])
def test_what_it_cannot_serve_goes_to_the_formula_and_is_right(paths, name):
    z, y, t, distance = _case(name)
    got = z.clone().requires_grad_(True)
    loss = soft_nearest_neighbor_loss(got, y, t, distance=distance, backend="blocked")
    loss.backward()
    truth = z.double().requires_grad_(True)
    expected = soft_nearest_neighbor_loss(truth, y, t, distance=distance, backend="reference")
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=2e-5, atol=1e-6)
    scale = float(truth.grad.abs().max())
    torch.testing.assert_close(got.grad.double(), truth.grad, rtol=2e-3, atol=2e-4 * scale)
    # a shared offset is served (the points are centred first); the others are handed on
    assert paths["handed on" if name != "shared offset" else "served"] == 1


@pytest.mark.parametrize("form", ["snnl", "supcon"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_second_order_is_exact(paths, distance, form):
    from snnl.loss import supcon_loss

    g = torch.Generator().manual_seed(2)
    z = torch.randn(12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (12,), generator=g)
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    function = soft_nearest_neighbor_loss if form == "snnl" else supcon_loss

    def loss(z, t):
        return function(z, y, t, distance=distance, backend="blocked")

    assert torch.autograd.gradcheck(loss, (z, t))
    assert torch.autograd.gradgradcheck(loss, (z, t))
    assert paths["served"] > 0


def test_a_step_leaves_no_reference_cycle(paths):
    # what the backward pass keeps is freed with the loss, not at the next
    # garbage collection (a training loop would hold every step's b x b
    # tensors).  (With create_graph=True, the autograd.grad inside the
    # backward pass makes a cycle that the collector frees: torch's own.)
    z = torch.randn(64, 8, requires_grad=True)
    y = torch.randint(0, 4, (64,))
    gc.collect()
    gc.disable()
    try:
        loss = soft_nearest_neighbor_loss(z, y, 0.5, backend="blocked")
        loss.backward()
        del loss
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert paths["served"] == 1


def test_wide_points_it_cannot_serve_go_to_the_operator(paths):
    # above one tile there is no ``lean.statistics``: the tiles take the call
    g = torch.Generator().manual_seed(9)
    z = torch.randn(520, 1000, generator=g, dtype=torch.float64)
    z[7] = 0.0  # a zero row: handed on
    y = torch.randint(0, 5, (520,), generator=g)
    got = z.clone().requires_grad_(True)
    soft_nearest_neighbor_loss(got, y, 0.5, backend="blocked").backward()
    truth = z.clone().requires_grad_(True)
    soft_nearest_neighbor_loss(truth, y, 0.5, backend="reference").backward()
    torch.testing.assert_close(got.grad, truth.grad, rtol=1e-9, atol=1e-12)
    assert paths == {"served": 0, "handed on": 1}


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_keys", [False, True])
def test_supcon_one_tile_equals_the_o_bd_path(monkeypatch, distance, with_keys):
    # SupCon's L_out from one matrix of logits (one tile, eager) against the
    # backends' log-sum-exp less the O(b d) mean positive logit (the tiles)
    from snnl.loss import supcon_loss
    from snnl.loss.backends.blocked import lean

    calls = []
    for module in (lean, lean_rows):  # with its own backward (square), or autograd (keys)
        original = module.supcon_rows
        monkeypatch.setattr(module, "supcon_rows", lambda *args, f=original: calls.append(1) or f(*args))
    g = torch.Generator().manual_seed(4)
    z = torch.randn(30, 2, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (30,), generator=g)
    y[0] = 99  # a sample whose only positive is its other view
    keys = torch.randn(11, 6, generator=g, dtype=torch.float64) if with_keys else None
    key_labels = torch.randint(0, 4, (11,), generator=g) if with_keys else None
    t = torch.tensor(0.3, dtype=torch.float64)
    results = []
    for fits in (True, False):
        if not fits:
            monkeypatch.setattr(lean, "fits", lambda inputs: False)
            monkeypatch.setattr(lean_rows, "fits", lambda inputs: False)
        zz, tt = z.clone().requires_grad_(True), t.clone().requires_grad_(True)
        rows = supcon_loss(zz, y, tt, keys=keys, key_labels=key_labels, distance=distance, reduction="none")
        (rows * torch.linspace(0.5, 1.5, rows.numel(), dtype=torch.float64).view_as(rows)).sum().backward()
        results.append((rows.detach(), zz.grad, tt.grad))
    for fast, tiled in zip(*results):
        torch.testing.assert_close(fast, tiled, rtol=1e-10, atol=1e-12)
    assert len(calls) == 1
