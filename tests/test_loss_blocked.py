"""The CPU path's own machinery: the exact pass for far rows, tiles and their
order, the worker threads and determinism.  Its agreement with the reference
over the whole grid of shapes, labels and temperatures is in
test_loss_backends.py."""

import threading
import zlib

import pytest
import torch

from snnl import soft_nearest_neighbor_loss
from snnl.loss.backends.blocked import far, workers
from snnl.loss.backends.blocked.points import Points
from snnl.loss.backends.blocked.tiles import block_bounds, tile_pairs

from .loss_cases import backend_rows, compare, make_labels, make_points, reference_rows


@pytest.fixture
def exact_rows_calls(monkeypatch):
    """Counts the rows that went through the exact pass for far rows."""
    calls = []
    original = far._exact_logits

    def spy(q, k, rows, *args):
        calls.append(rows.numel())
        return original(q, k, rows, *args)

    monkeypatch.setattr(far, "_exact_logits", spy)
    return calls


@pytest.mark.parametrize("tiles", ["small", "default"])
@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.0005), (torch.float32, 0.005)])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_far_rows_are_recomputed_exactly(request, exact_rows_calls, tiles, dtype, temperature, distance, eps):
    # At these temperatures random points in 40 dimensions have neighbours more
    # than FAR * T away: their shared-shift sums underflow, and the exact pass
    # must restore them, loss and gradients (eps = 0 is the unforgiving case:
    # the loss is lse_all - lse_same with no eps to hide an error).  "default":
    # one tile of the operator (the eager path for one tile, ``lean``, never
    # has far rows: it is off here)
    request.getfixturevalue("small_tiles" if tiles == "small" else "tiled")
    rtol, grad_rtol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-5, 2e-4)
    compare("blocked", 60, 40, "few_classes", temperature, distance, eps, dtype, rtol, grad_rtol)
    assert sum(exact_rows_calls) > 0, "no far rows: the test does not reach the exact pass"


@pytest.fixture
def rescaled_rows(monkeypatch):
    """Counts the rows the far rows' pass took at their own scale."""
    calls = []
    original = Points.take

    def spy(self, index):
        calls.append(index.numel())
        return original(self, index)

    monkeypatch.setattr(Points, "take", spy)
    return calls


@pytest.mark.parametrize("tiles", ["small", "default"])
@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.0011), (torch.float32, 0.011)])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_far_rows_whose_sums_survived_take_their_own_scale(
    request, exact_rows_calls, rescaled_rows, tiles, dtype, temperature, eps
):
    # Random 70-d points at these temperatures: rows are far (their sums below
    # exp(-FAR): all of them in fp32, about half in fp64) but keep some terms:
    # the far rows' pass recomputes them at the scale of their own
    # log-sum-exp, through the tiles, and none needs the exact pass
    request.getfixturevalue("small_tiles" if tiles == "small" else "tiled")
    rtol, grad_rtol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-5, 2e-4)
    compare("blocked", 120, 70, "few_classes", temperature, "cosine", eps, dtype, rtol, grad_rtol)
    assert rescaled_rows and rescaled_rows[0] >= 40 and exact_rows_calls == []


def test_no_far_rows_at_ordinary_temperatures(small_tiles, exact_rows_calls):
    compare("blocked", 200, 30, "few_classes", 0.1, "cosine", 0.0)
    compare("blocked", 200, 30, "few_classes", 0.1, "euclidean", 1e-5)
    assert exact_rows_calls == []


def test_rows_whose_same_class_sum_underflows_keep_their_neighbours(tiled, exact_rows_calls):
    # A pair of same-class points far from each other and from everything: the
    # same-class sum underflows to 0 in fp32, which must not read as "no
    # same-class neighbour" (the loss would become -log(eps) or +inf).
    z = torch.zeros(6, 3)
    z[0, 0], z[1, 0] = 1.0, -1.0  # same class, cosine distance 2
    z[2:, 1] = 1.0
    z[2:, 2] = torch.tensor([0.0, 0.01, 0.02, 0.03])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    t = torch.tensor(0.02)
    rows = backend_rows("blocked", "cosine", 0.0)(z, labels, t)
    expected = reference_rows(z.double(), labels, t.double(), "cosine", 0.0)
    assert torch.isfinite(rows[:2]).all() and exact_rows_calls
    torch.testing.assert_close(rows.double(), expected, rtol=1e-5, atol=1e-5)


def _loss_and_grads(z, labels, t, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        zz, tt = z.clone().requires_grad_(True), t.clone().requires_grad_(True)
        loss = soft_nearest_neighbor_loss(zz, labels, tt, backend="blocked")
        loss.backward()
        return loss.detach(), zz.grad, tt.grad
    finally:
        torch.set_num_threads(previous)


def test_results_are_bitwise_the_same_whatever_the_threads():
    # tiles are added in a fixed order whichever worker computed them
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2000, 20, generator=g)
    labels = torch.randint(0, 7, (2000,), generator=g)
    t = torch.tensor(0.3)
    runs = [_loss_and_grads(z, labels, t, threads) for threads in (1, 2, 2, 3)]
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_blocks_and_tile_pairs():
    assert block_bounds(10) == [(0, 10)]
    assert len(block_bounds(1024)) == 2
    bounds = block_bounds(2049)
    assert len(bounds) == 5 and bounds[0][0] == 0 and bounds[-1][1] == 2049
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1  # no sliver at the end
    assert max(b - a for a, b in block_bounds(100_000)) <= 512
    square = tile_pairs(3, 3, True)
    assert len(square) == 6 and sum(i == j for i, j in square) == 3  # 3 diagonal, 3 serving both ways
    assert len(tile_pairs(2, 3, False)) == 6


def test_workers_apply_in_order_and_reraise():
    applied = []
    workers.run_in_order(50, lambda k: k * k, lambda k, r: applied.append((k, r)), workers=3)
    assert applied == [(k, k * k) for k in range(50)]

    def compute(k):
        if k == 7:
            raise ArithmeticError("tile 7")
        return k

    with pytest.raises(ArithmeticError, match="tile 7"):
        workers.run_in_order(20, compute, lambda k, r: None, workers=2)


def test_workers_run_single_threaded_and_leave_the_callers_threads_alone():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = set()
        workers.run_in_order(
            8, lambda k: (threading.get_ident(), torch.get_num_threads()), lambda k, r: seen.add(r), workers=2
        )
        assert {threads for _, threads in seen} == {1}
        assert threading.get_ident() not in {ident for ident, _ in seen}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("tiles", ["one", "tiled"])
def test_nan_in_points_gives_nan_loss_when_values_are_not_checked(request, backend, tiles):
    # check_values=False (and compiled code, which skips the check): no
    # quietly finite loss from a NaN input
    g = torch.Generator().manual_seed(zlib.crc32(b"nan"))
    z = make_points(50, 6, "cosine", torch.float32, g)
    labels = make_labels("few_classes", 50, g)
    z[3, 2] = float("nan")
    if tiles == "tiled":
        request.getfixturevalue("small_tiles")
    assert torch.isnan(soft_nearest_neighbor_loss(z, labels, backend=backend, check_values=False))


def test_the_worker_pool_shuts_down_and_starts_again():
    # joined at exit and before a process group is destroyed; the next tiles start a new pool
    workers.run_in_order(8, lambda k: k, lambda k, r: None, workers=2)
    threads = [t for t in threading.enumerate() if t.name.startswith("snnl-tiles")]
    assert threads
    workers.shutdown()
    assert not any(t.is_alive() for t in threads)
    applied = []
    workers.run_in_order(8, lambda k: k, lambda k, r: applied.append(r), workers=2)
    assert applied == list(range(8))
