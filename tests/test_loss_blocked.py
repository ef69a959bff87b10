"""The blocked backend's own machinery: the exact pass for far rows, the
compiled elementwise work, determinism and the fallback when compilation
fails.  Its agreement with the reference over the whole grid of shapes,
labels and temperatures is in test_loss_backends.py (run eagerly there)."""

import warnings
import zlib

import pytest
import torch

from snnl import soft_nearest_neighbor_loss
from snnl.loss import blocked, shared_exp
from snnl.loss import compiled as compiled_module
from snnl.loss.blocked import _bounds, _tile_pairs, blocked_rows
from snnl.loss.reference import reference_rows

from .loss_cases import (
    assert_close_rows,
    assert_close_scaled,
    make_labels,
    make_points,
    normalisation_terms,
    rows_and_grads,
    temperature_gradient_scale,
)


def check(b, d, pattern, temperature, distance, eps, block_rows, dtype=torch.float64, rtol=1e-9, grad_rtol=1e-8):
    g = torch.Generator().manual_seed(zlib.crc32(repr((b, d, pattern, temperature, distance, eps)).encode()))
    z = make_points(b, d, distance, dtype, g)
    labels = make_labels(pattern, b, g)
    t = torch.tensor(temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    weights = torch.randn(b, generator=g, dtype=torch.float64)
    reference = lambda z, y, t: reference_rows(z, y, t, distance, eps)  # noqa: E731
    expected = rows_and_grads(reference, z.double(), labels, t.double(), weights)
    actual = rows_and_grads(lambda z, y, t: blocked_rows(z, y, t, distance == "euclidean", eps, block_rows),
                            z, labels, t, weights)
    assert_close_rows(actual[0], expected[0], rtol=rtol, atol=rtol)
    floor = normalisation_terms(z, labels, t, weights, eps) if distance == "cosine" else None
    assert_close_scaled(actual[1], expected[1], grad_rtol, floor)
    t_scale = temperature_gradient_scale(reference, z, labels, t, weights)
    torch.testing.assert_close(actual[2].double(), expected[2], rtol=grad_rtol, atol=grad_rtol * max(t_scale, 1e-6))
    return actual


@pytest.fixture
def exact_rows_calls(monkeypatch):
    """Counts the rows that went through the exact pass for far rows."""
    calls = []
    original = shared_exp._exact_logits

    def spy(rows, *args):
        calls.append(rows.shape[0])
        return original(rows, *args)

    monkeypatch.setattr(shared_exp, "_exact_logits", spy)
    return calls


@pytest.mark.parametrize("block_rows", [1024, 16])
@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.0005), (torch.float32, 0.005)])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_far_rows_are_recomputed_exactly(exact_rows_calls, block_rows, dtype, temperature, distance, eps):
    # At these temperatures random points in 40 dimensions have neighbours more
    # than FAR * T away: their shared-shift sums underflow, and the exact pass
    # must restore them, loss and gradients (eps = 0 is the unforgiving case:
    # the loss is lse_all - lse_same with no eps to hide an error).
    rtol, grad_rtol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-5, 2e-4)
    check(60, 40, "few_classes", temperature, distance, eps, block_rows, dtype, rtol, grad_rtol)
    assert sum(exact_rows_calls) > 0, "no far rows: the test does not reach the exact pass"


def test_no_far_rows_at_ordinary_temperatures(exact_rows_calls):
    check(200, 30, "few_classes", 0.1, "cosine", 0.0, 64)
    check(200, 30, "few_classes", 0.1, "euclidean", 1e-5, 64)
    assert exact_rows_calls == []


def test_rows_whose_same_class_sum_underflows_keep_their_neighbours(exact_rows_calls):
    # A pair of same-class points far from each other and from everything: the
    # same-class sum underflows to 0 in fp32, which must not read as "no
    # same-class neighbour" (the loss would become -log(eps) or +inf).
    z = torch.zeros(6, 3)
    z[0, 0], z[1, 0] = 1.0, -1.0  # same class, cosine distance 2
    z[2:, 1] = 1.0
    z[2:, 2] = torch.tensor([0.0, 0.01, 0.02, 0.03])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    t = torch.tensor(0.02)
    rows = blocked_rows(z, labels, t, False, 0.0)
    expected = reference_rows(z.double(), labels, t.double(), "cosine", 0.0)
    assert torch.isfinite(rows[:2]).all() and exact_rows_calls
    torch.testing.assert_close(rows.double(), expected, rtol=1e-5, atol=1e-5)


def test_results_are_deterministic():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(300, 20, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    runs = []
    for _ in range(2):
        zz = z.clone().requires_grad_(True)
        loss = blocked_rows(zz, labels, torch.tensor(0.3), False, 1e-5, 64).sum()
        loss.backward()
        runs.append((loss.detach(), zz.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_blocks_and_tile_pairs():
    assert _bounds(10, 1024) == [(0, 10)]
    bounds = _bounds(2049, 1024)
    assert len(bounds) == 3 and bounds[0][0] == 0 and bounds[-1][1] == 2049
    assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1  # no sliver at the end
    square = _tile_pairs(bounds, bounds, True)
    assert len(square) == 6 and sum(columns for *_, columns in square) == 3  # 3 diagonal, 3 serving both ways
    assert len(_tile_pairs(bounds[:2], bounds, False)) == 6


# --------------------------------------------------------------------------- compiled


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("SNNL_COMPILE", "1")


# Each case compiles its variants once (a few seconds each on a cold machine):
# the dense tile (small batches), the tiles of both kinds (off-diagonal pairs
# and diagonal ones, one-hot and pairwise label sums), queries against keys,
# the normalisation, both distances and both float types.
COMPILED_CASES = [
    # b, d, pattern, T, distance, eps, block_rows, dtype
    (150, 70, "few_classes", 0.5, "cosine", 1e-5, 1024, torch.float32),
    (150, 70, "few_classes", 0.5, "cosine", 1e-5, 64, torch.float32),
    (150, 33, "all_distinct", 0.1, "cosine", 0.0, 64, torch.float32),
    (150, 33, "singletons", 0.5, "euclidean", 1e-5, 1024, torch.float32),
    (150, 33, "few_classes", 0.5, "euclidean", 0.0, 64, torch.float32),
    (97, 16, "few_classes", 0.2, "cosine", 0.0, 1024, torch.float64),
]


@pytest.mark.parametrize("b,d,pattern,temperature,distance,eps,block_rows,dtype", COMPILED_CASES)
def test_compiled_matches_reference_and_eager(compiled, monkeypatch, b, d, pattern, temperature, distance, eps,
                                              block_rows, dtype):
    rtol, grad_rtol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-5, 1e-4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="snnl:")  # a compilation failure would warn and fall back
        actual = check(b, d, pattern, temperature, distance, eps, block_rows, dtype, rtol, grad_rtol)
    monkeypatch.setenv("SNNL_COMPILE", "0")
    eager = check(b, d, pattern, temperature, distance, eps, block_rows, dtype, rtol, grad_rtol)
    # the same arithmetic, fused differently: rounding-level differences only
    torch.testing.assert_close(actual[0], eager[0], rtol=50 * torch.finfo(dtype).eps, atol=0)


def test_compiled_queries_against_keys(compiled):
    from snnl.loss.functional import soft_nearest_neighbor_rows

    g = torch.Generator().manual_seed(11)
    z = torch.randn(150, 24, generator=g)
    labels = torch.randint(0, 5, (150,), generator=g)
    zq = z.clone().requires_grad_(True)
    rows = torch.cat([
        blocked_rows(zq[a:b], labels[a:b], torch.tensor(0.4), False, 1e-5, 64, keys=zq, key_labels=labels, offset=a)
        for a, b in [(0, 70), (70, 150)]
    ])
    rows.sum().backward()
    zr = z.clone().requires_grad_(True)
    expected = soft_nearest_neighbor_rows(zr, labels, zr, labels, 0.4, offset=0, backend="reference")
    expected.sum().backward()
    torch.testing.assert_close(rows, expected, rtol=2e-5, atol=2e-5)
    assert_close_scaled(zq.grad, zr.grad, 1e-4)


def test_compilation_failure_falls_back_to_eager_once(compiled, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler here")
        return run

    fresh = compiled_module.Compiled(blocked.dense_forward)
    monkeypatch.setattr(blocked, "_dense_forward", fresh)
    monkeypatch.setattr(torch, "compile", broken)
    z, labels = torch.randn(20, 5), torch.randint(0, 3, (20,))
    with pytest.warns(UserWarning, match="torch.compile of dense_forward failed .*running it eagerly"):
        first = soft_nearest_neighbor_loss(z, labels, backend="blocked")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="snnl:")  # warned once only
        second = soft_nearest_neighbor_loss(z, labels, backend="blocked")
    assert fresh.failed and torch.equal(first, second)
    expected = soft_nearest_neighbor_loss(z.double(), labels, backend="reference")
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-6)
