"""Every fast path against the reference: losses and gradients (z and T).

The Triton kernels run under the interpreter here (TRITON_INTERPRET=1, set in
conftest.py when there is no GPU); the interpreter is slow, so its grid is
smaller than the chunked one and uses batches up to ~300.  Shapes are chosen
not to be multiples of the block sizes, and small block sizes are forced so
that every batch spans several row and column tiles and every feature
dimension above 16 spans several chunks.

Tolerances: in float64 the backends differ from the reference only in
summation order, so 1e-9 relative (loss) and 1e-8 relative to the largest
gradient entry are ample for sums over a few hundred terms at T >= 0.01,
whose logits reach 200 in magnitude.  float32 runs compare with a float64
reference with tolerances of a few hundred ulps for the same reason.
"""

import itertools
import zlib

import pytest
import torch
import torch.nn.functional as F

from snnl import soft_nearest_neighbor_loss
from snnl.loss.blocked import blocked_rows
from snnl.loss.chunked import chunked_rows
from snnl.loss.reference import reference_rows

from .loss_cases import (
    LABEL_PATTERNS,
    assert_close_rows,
    assert_close_scaled,
    make_labels,
    make_points,
    normalisation_terms,
    rows_and_grads,
    temperature_gradient_scale,
)

triton = pytest.importorskip("triton", reason="the triton backend tests need the triton package")
from snnl.kernels.soft_nearest_neighbor import TileConfig  # noqa: E402  (imports triton)
from snnl.loss.fused import fused_rows  # noqa: E402


def prepared(distance):
    return (lambda z: F.normalize(z, dim=1)) if distance == "cosine" else (lambda z: z)


def backend_rows(backend, distance, eps, **kw):
    prep = prepared(distance)
    cosine = distance == "cosine"
    if backend == "chunked":
        return lambda z, y, t: chunked_rows(prep(z), y, t, cosine, eps, block_rows=kw.get("block_rows", 7))
    if backend == "blocked":  # normalises the raw points itself
        return lambda z, y, t: blocked_rows(z, y, t, not cosine, eps, block_rows=kw.get("block_rows", 7))
    if backend == "triton":
        # 16-row tiles: every batch spans several row tiles and key-range
        # parts; 64-wide feature chunks: d > 64 takes the chunked path (the
        # interpreter's time grows with the square of the number of chunks)
        # (the raw points: the kernels normalise them themselves)
        return lambda z, y, t: fused_rows(z, y, t, cosine, eps, kw.get("config", TileConfig(16, 16, 64)))
    return lambda z, y, t: reference_rows(z, y, t, distance, eps)


def compare(backend, b, d, pattern, temperature, distance, eps, dtype=torch.float64, rtol=1e-9, grad_rtol=1e-8, **kw):
    # crc32, not hash(): str hashes change from process to process
    g = torch.Generator().manual_seed(zlib.crc32(repr((b, d, pattern, temperature, distance, eps)).encode()))
    z = make_points(b, d, distance, dtype, g)
    labels = make_labels(pattern, b, g)
    t = torch.tensor(temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    weights = torch.randn(b, generator=g, dtype=torch.float64)
    reference = backend_rows("reference", distance, eps)
    expected = rows_and_grads(reference, z.double(), labels, t.double(), weights)
    actual = rows_and_grads(backend_rows(backend, distance, eps, **kw), z, labels, t, weights)
    assert_close_rows(actual[0], expected[0], rtol=rtol, atol=rtol)
    floor = normalisation_terms(z, labels, t, weights, eps) if distance == "cosine" else None
    assert_close_scaled(actual[1], expected[1], grad_rtol, floor)
    # dL/dT = sum_i w_i dl_i/dT cancels: judge its error against the terms
    t_scale = temperature_gradient_scale(reference, z, labels, t, weights)
    torch.testing.assert_close(actual[2].double(), expected[2], rtol=grad_rtol, atol=grad_rtol * max(t_scale, 1e-6))


SHAPES = [(2, 1), (3, 5), (17, 3), (33, 16), (64, 70), (100, 33), (130, 130), (257, 9)]
TEMPERATURES = [0.01, 0.1, 1.0, 100.0]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("pattern", LABEL_PATTERNS)
@pytest.mark.parametrize("b,d", SHAPES)
def test_chunked_matches_reference(b, d, pattern, distance, eps):
    for temperature in TEMPERATURES:
        compare("chunked", b, d, pattern, temperature, distance, eps)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("pattern", LABEL_PATTERNS)
@pytest.mark.parametrize("b,d", SHAPES)
def test_blocked_matches_reference(b, d, pattern, distance, eps):
    # block_rows=7: every batch above 7 rows is tiled (diagonal and off-diagonal
    # block pairs, one-hot sums for few classes, pairwise labels for many);
    # the default block serves it as one dense tile.
    for temperature in TEMPERATURES:
        compare("blocked", b, d, pattern, temperature, distance, eps)
        compare("blocked", b, d, pattern, temperature, distance, eps, block_rows=1024)


# The interpreter grid: every label pattern, temperature, distance and eps value
# is covered, paired with shapes so that the whole grid stays around a minute.
TRITON_CASES = [
    (b, d, pattern, temperature, distance, eps)
    for (b, d), pattern, (temperature, distance, eps) in zip(
        itertools.cycle([(2, 1), (3, 5), (17, 3), (33, 16), (65, 40), (100, 33), (130, 130), (300, 7)]),
        LABEL_PATTERNS * 8,
        itertools.product(TEMPERATURES, ["cosine", "euclidean"], [1e-5, 0.0]),
    )
]


@pytest.mark.parametrize("b,d,pattern,temperature,distance,eps", TRITON_CASES)
def test_triton_matches_reference(b, d, pattern, temperature, distance, eps):
    compare("triton", b, d, pattern, temperature, distance, eps)


def test_launches_refuse_operands_not_padded_for_their_feature_chunks():
    # the kernels read whole feature chunks without masks: a buffer padded for
    # 16-wide chunks must not be read in 64-wide ones
    from snnl.kernels.rows import operands
    from snnl.kernels.soft_nearest_neighbor import forward_launch

    x = torch.randn(8, 5)
    ops = operands(x, "ieee")
    assert ops[0].shape == (8, 16) and operands(x, "ieee", 64)[0].shape == (8, 64)
    assert torch.equal(ops[0][:, :5], x) and not ops[0][:, 5:].any()
    labels = torch.zeros(8, dtype=torch.int64)
    with pytest.raises(ValueError, match="feature chunks of 64"):
        forward_launch(ops, ops, labels, labels, None, None, torch.tensor(1.0), 0, config=TileConfig(16, 16, 64))


def test_operands_split_for_3xtf32():
    # hi exact in TF32 (the low 13 mantissa bits zero, rounded to nearest),
    # lo the exact rest; squared norms of the unsplit points; for the cosine
    # distance, the points normalised first as F.normalize does, and the norms
    from snnl.kernels.rows import prepare

    x = torch.randn(37, 21) * torch.logspace(-3, 3, 21)
    hi, lo, sq = prepare(x, "tf32x3")
    assert hi.shape == (37, 32) and not hi[:, 21:].any() and not lo[:, 21:].any()
    assert not (hi.view(torch.int32) & 0x1FFF).any()
    assert torch.equal(hi[:, :21] + lo[:, :21], x)
    assert (lo[:, :21].abs() <= hi[:, :21].abs() * 2.0 ** -11).all()
    torch.testing.assert_close(sq, x.pow(2).sum(1), rtol=1e-6, atol=0)
    hi, lo, norms = prepare(x, "tf32x3", cosine=True)
    torch.testing.assert_close(hi[:, :21] + lo[:, :21], F.normalize(x, dim=1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(norms, x.norm(dim=1), rtol=1e-6, atol=0)
    zero = prepare(torch.zeros(3, 4), "tf32x3", cosine=True)
    assert not zero[0].any() and torch.equal(zero[2], torch.full((3,), 1e-12))  # F.normalize's floor


def _far_rows(z, labels, temperature, distance, eps, far):
    """Rows of the case whose exact log-sum-exps lie below -far (the shared
    scale underflows for them): the case must hold some."""
    s = prepared(distance)(z.double())
    d = 1 - s @ s.T if distance == "cosine" else torch.cdist(s, s) ** 2
    logits = (-d / temperature).fill_diagonal_(-float("inf"))
    same = labels[:, None] == labels[None, :]
    lse_all = torch.logsumexp(logits, 1)
    lse_same = torch.logsumexp(logits.masked_fill(~same, -float("inf")), 1)
    return int(((lse_all < -far) | (lse_same.isfinite() & (lse_same < -far))).sum())


@pytest.mark.parametrize("dtype,temperature", [(torch.float64, 0.0005), (torch.float32, 0.005)])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_triton_far_rows_are_recomputed_exactly(dtype, temperature, distance, eps):
    # At these temperatures random points in 40 dimensions have neighbours more
    # than FAR * T away: their shared-shift sums underflow, and the kernels'
    # exact pass (forward) and exact terms (backward) must restore them.
    from snnl.loss.shared_exp import FAR

    b, d = 60, 40
    g = torch.Generator().manual_seed(zlib.crc32(repr((b, d, "few_classes", temperature, distance, eps)).encode()))
    assert _far_rows(make_points(b, d, distance, dtype, g), make_labels("few_classes", b, g), temperature, distance,
                     eps, FAR[dtype]) > 0, "no far rows: the test does not reach the exact pass"
    rtol, grad_rtol = (1e-9, 1e-8) if dtype == torch.float64 else (2e-5, 2e-4)
    compare("triton", b, d, "few_classes", temperature, distance, eps, dtype=dtype, rtol=rtol, grad_rtol=grad_rtol)


def test_triton_rows_whose_same_class_sum_underflows_keep_their_neighbours():
    # A pair of same-class points far from each other and from everything: the
    # same-class sum underflows to 0 in fp32, which must not read as "no
    # same-class neighbour" (the loss would become -log(eps) or +inf).
    z = torch.zeros(6, 3)
    z[0, 0], z[1, 0] = 1.0, -1.0  # same class, cosine distance 2
    z[2:, 1] = 1.0
    z[2:, 2] = torch.tensor([0.0, 0.01, 0.02, 0.03])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    t = torch.tensor(0.02)
    rows = fused_rows(F.normalize(z, dim=1), labels, t, True, 0.0, TileConfig(16, 16, 16))
    expected = reference_rows(z.double(), labels, t.double(), "cosine", 0.0)
    assert torch.isfinite(rows[:2]).all()
    torch.testing.assert_close(rows.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triton_default_configuration(distance):
    # The configuration the launcher picks (pinned under the interpreter): the
    # feature dimension fits one chunk, loaded once per row tile.
    compare("triton", 70, 45, "few_classes", 0.5, distance, 1e-5, config=None)


@pytest.mark.parametrize("backend", ["chunked", "blocked", "triton"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_float32_against_float64_reference(backend, distance):
    compare(backend, 150, 70, "few_classes", 0.1, distance, 1e-5, dtype=torch.float32, rtol=2e-5, grad_rtol=1e-4)


def test_triton_float16_against_float64_reference():
    # Triton's interpreter mishandles bf16 in tl.dot (3.9), so bfloat16 is
    # checked by the GPU tests only.  fp16 inputs are rounded to 11 bits.
    compare("triton", 90, 24, "few_classes", 0.5, "cosine", 1e-5, dtype=torch.float16, rtol=2e-3, grad_rtol=5e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", ["chunked", "blocked", "triton"])
def test_public_api_reductions(backend, reduction):
    for eps in (1e-5, 0.0):
        z = torch.randn(41, 6, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 3] * 10 + [9])  # label 9 is a singleton
        t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        zr = z.clone().requires_grad_(True)
        zb = z.clone().requires_grad_(True)
        ref = soft_nearest_neighbor_loss(zr, labels, t, eps=eps, reduction=reduction, backend="reference")
        out = soft_nearest_neighbor_loss(zb, labels, t, eps=eps, reduction=reduction, backend=backend)
        assert_close_rows(out.reshape(-1), ref.reshape(-1), rtol=1e-10, atol=1e-12)
        weights = torch.randn(ref.shape, dtype=torch.float64)
        (gr,) = torch.autograd.grad(torch.where(torch.isfinite(ref), ref * weights, 0).sum(), [zr])
        (gb,) = torch.autograd.grad(torch.where(torch.isfinite(out), out * weights, 0).sum(), [zb])
        assert_close_scaled(gb, gr, 1e-9)


def test_auto_backend_on_cpu_is_blocked_and_matches():
    z = torch.randn(50, 8)
    labels = torch.randint(0, 5, (50,))
    auto = soft_nearest_neighbor_loss(z, labels, backend="auto")
    blocked = soft_nearest_neighbor_loss(z, labels, backend="blocked")
    assert torch.equal(auto, blocked)


def test_chunked_default_block_covers_large_batch():
    # Default block (4M elements) -> several blocks at b = 3000.
    from snnl.loss.chunked import block_rows_for

    assert block_rows_for(3000) < 3000
    z = torch.randn(3000, 4, dtype=torch.float64)
    labels = torch.randint(0, 10, (3000,))
    ref = soft_nearest_neighbor_loss(z, labels, 0.2, backend="reference", reduction="none")
    out = soft_nearest_neighbor_loss(z, labels, 0.2, backend="chunked", reduction="none")
    assert_close_rows(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference", "chunked", "blocked", "triton"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_queries_against_keys_add_up_to_the_square_loss(backend, distance, eps):
    # How torch.distributed uses the loss: each part of the batch (a process's
    # rows) against the whole batch, with the parts' results summed.
    from snnl.loss.functional import soft_nearest_neighbor_rows

    g = torch.Generator().manual_seed(7)
    z = make_points(70, 19, distance, torch.float64, g)
    labels = make_labels("singletons", 70, g)
    weights = torch.randn(70, generator=g, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    expected = rows_and_grads(backend_rows("reference", distance, eps), z, labels, t, weights)

    zq = z.clone().requires_grad_(True)
    tq = t.clone().requires_grad_(True)
    parts = [(0, 23), (23, 24), (24, 70)]
    rows = torch.cat([
        soft_nearest_neighbor_rows(zq[a:b], labels[a:b], zq, labels, tq, offset=a, distance=distance, eps=eps,
                                   backend=backend)
        for a, b in parts
    ])
    objective = torch.where(torch.isfinite(rows), rows * weights, torch.zeros_like(rows)).sum()
    grad_z, grad_t = torch.autograd.grad(objective, [zq, tq])
    assert_close_rows(rows.detach(), expected[0], rtol=1e-10, atol=1e-12)
    assert_close_scaled(grad_z, expected[1], 1e-9)
    assert_close_scaled(grad_t, expected[2], 1e-9)


def test_queries_offset_is_validated():
    from snnl.loss.functional import soft_nearest_neighbor_rows

    z, labels = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="offset must place the 4 queries inside the 10 keys"):
        soft_nearest_neighbor_rows(z[:4], labels[:4], z, labels, offset=7)
    with pytest.raises(ValueError, match="queries must be 2-D with 3 features"):
        soft_nearest_neighbor_rows(z[:4, :2], labels[:4], z, labels, offset=0)
