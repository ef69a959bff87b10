"""Every fast path against the reference: losses and gradients (z and T), through
one comparison (``loss_cases.compare``) over shapes, label patterns,
temperatures, distances, eps and tile sizes.

The Triton kernels run under the interpreter here (TRITON_INTERPRET=1, set in
conftest.py when there is no GPU); the interpreter is slow, so its grid is a
selection that still covers every label pattern, temperature, distance and eps
value.  Shapes are chosen not to be multiples of the block sizes, and small
tiles (the ``small_tiles`` fixture) make every batch span several row and
column tiles and every feature dimension above 16 several chunks.
"""

import itertools

import pytest
import torch

from snnl import soft_nearest_neighbor_loss

from .loss_cases import LABEL_PATTERNS, assert_close_rows, assert_close_scaled, backend_rows, compare, reference_rows

SHAPES = [(2, 1), (3, 5), (17, 3), (33, 16), (64, 70), (100, 33), (130, 130), (257, 9)]
TEMPERATURES = [0.01, 0.1, 1.0, 100.0]


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("pattern", LABEL_PATTERNS)
@pytest.mark.parametrize("b,d", SHAPES)
def test_blocked_matches_reference(small_tiles, b, d, pattern, temperature, distance, eps):
    # 7-row blocks: every batch above 7 rows is tiled (diagonal and off-diagonal
    # block pairs, one-hot sums for few classes, pairwise labels for many)
    compare("blocked", b, d, pattern, temperature, distance, eps)


@pytest.mark.parametrize("temperature", [0.01, 1.0])
@pytest.mark.parametrize("pattern", ["few_classes", "all_distinct"])
@pytest.mark.parametrize("b,d", [(100, 33), (257, 9), (1100, 5)])
def test_blocked_default_tiles_match_reference(b, d, pattern, temperature):
    # the blocks the batch size picks (a few 128-row ones up to 512-row ones)
    for distance, eps in (("cosine", 1e-5), ("euclidean", 0.0)):
        compare("blocked", b, d, pattern, temperature, distance, eps)


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
def test_triton_matches_reference(small_tiles, b, d, pattern, temperature, distance, eps):
    pytest.importorskip("triton")
    compare("triton", b, d, pattern, temperature, distance, eps)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triton_default_configuration(distance):
    # The configuration the launcher picks (pinned under the interpreter): the
    # feature dimension fits one chunk, loaded once per row tile.
    pytest.importorskip("triton")
    compare("triton", 70, 45, "few_classes", 0.5, distance, 1e-5)


@pytest.mark.parametrize("backend", ["blocked", "triton"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_float32_against_float64_reference(backend, distance):
    if backend == "triton":
        pytest.importorskip("triton")
    compare(backend, 150, 70, "few_classes", 0.1, distance, 1e-5, dtype=torch.float32, rtol=2e-5, grad_rtol=1e-4)


def test_triton_float16_against_float64_reference():
    # Triton's interpreter mishandles bf16 in tl.dot (3.9), so bfloat16 is
    # checked by the GPU tests only.  fp16 inputs are rounded to 11 bits.
    pytest.importorskip("triton")
    compare("triton", 90, 24, "few_classes", 0.5, "cosine", 1e-5, dtype=torch.float16, rtol=2e-3, grad_rtol=5e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "mean_over_positives"])
@pytest.mark.parametrize("backend", ["blocked", "triton"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_public_api_reductions(backend, reduction, eps):
    if backend == "triton":
        pytest.importorskip("triton")
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


@pytest.mark.parametrize("backend", ["reference", "blocked", "triton"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_queries_against_keys_add_up_to_the_square_loss(small_tiles, backend, distance, eps):
    # How torch.distributed uses the loss: each part of the batch (a process's
    # rows) against the whole batch, query i being key offset + i, the parts'
    # results summed.
    if backend == "triton":
        pytest.importorskip("triton")
    from .loss_cases import make_labels, make_points, rows_and_grads

    g = torch.Generator().manual_seed(7)
    z = make_points(70, 19, distance, torch.float64, g)
    labels = make_labels("singletons", 70, g)
    weights = torch.randn(70, generator=g, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    expected = rows_and_grads(backend_rows("reference", distance, eps), z, labels, t, weights)

    zq = z.clone().requires_grad_(True)
    tq = t.clone().requires_grad_(True)
    rows_of = backend_rows(backend, distance, eps)
    rows = torch.cat(
        [
            rows_of(zq[a:b], labels[a:b], tq, keys=zq, key_labels=labels, self_offset=a)
            for a, b in [(0, 23), (23, 24), (24, 70)]
        ]
    )
    objective = torch.where(torch.isfinite(rows), rows * weights, torch.zeros_like(rows)).sum()
    grad_z, grad_t = torch.autograd.grad(objective, [zq, tq])
    assert_close_rows(rows.detach(), expected[0], rtol=1e-10, atol=1e-12)
    assert_close_scaled(grad_z, expected[1], 1e-9)
    assert_close_scaled(grad_t, expected[2], 1e-9)


@pytest.mark.parametrize("backend", ["blocked", "triton"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_queries_against_other_keys(small_tiles, backend, distance):
    # keys that are not the queries (a memory bank): nothing left out, gradients to both
    if backend == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(8)
    q = torch.randn(30, 11, generator=g, dtype=torch.float64) / (3 if distance == "euclidean" else 1)
    k = torch.randn(45, 11, generator=g, dtype=torch.float64) / (3 if distance == "euclidean" else 1)
    q_labels, k_labels = torch.randint(0, 4, (30,), generator=g), torch.randint(0, 4, (45,), generator=g)
    k_labels[:5] = 9  # no query has label 9
    q_labels[0] = 11  # a query with no same-class key
    out = []
    for name in ("reference", backend):
        qq, kk = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        rows = backend_rows(name, distance, 1e-5)(
            qq, q_labels, torch.tensor(0.4, dtype=torch.float64), keys=kk, key_labels=k_labels
        )
        out.append((rows.detach(), *torch.autograd.grad((rows * torch.arange(30.0).double()).sum(), [qq, kk])))
    assert_close_rows(out[1][0], out[0][0], rtol=1e-10, atol=1e-12)
    assert_close_scaled(out[1][1], out[0][1], 1e-9)
    assert_close_scaled(out[1][2], out[0][2], 1e-9)
    expected = reference_rows(
        q, q_labels, torch.tensor(0.4, dtype=torch.float64), distance, 1e-5, keys=k, key_labels=k_labels, self_offset=-1
    )
    assert_close_rows(out[0][0], expected, rtol=0, atol=0)


def _prepared(x, precision="ieee", euclidean=False, block_d=None, centre=None):
    from snnl.kernels.rows import prepare_launch

    if centre is None:
        centre = torch.zeros(x.shape[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    launch, operands = prepare_launch(x, centre, precision=precision, euclidean=euclidean, block_d=block_d)
    launch.run()
    return operands


def test_launches_refuse_operands_not_padded_for_their_feature_chunks():
    # the kernels read whole feature chunks without masks: a buffer padded for
    # 16-wide chunks must not be read in 64-wide ones
    pytest.importorskip("triton")
    from snnl.kernels.configs import TileConfig
    from snnl.kernels.layout import math_for
    from snnl.kernels.pair_kernels import forward_launch
    from snnl.kernels.rows import side

    x = torch.randn(8, 5)
    ops, _ = _prepared(x, euclidean=True)
    assert ops.shape == (8, 1, 16) and _prepared(x, euclidean=True, block_d=64).ops.shape == (8, 1, 64)
    assert torch.equal(ops[:, 0, :5], x) and not ops[:, 0, 5:].any()
    labels = torch.zeros(8, dtype=torch.int64)
    points = side(_prepared(x, euclidean=True), labels, euclidean=True)
    math = math_for(x.dtype, "ieee", True, False)
    with pytest.raises(ValueError, match="feature chunks of 64"):
        forward_launch(points, points, torch.tensor(1.0), 0, config=TileConfig(16, 16, 64), math=math)


def test_operands_split_for_3xtf32():
    # hi exact in TF32 (the low 13 mantissa bits zero, rounded to nearest),
    # lo the exact rest; the squared norms of the centred points; for the
    # cosine distance, the unit rows (the reference's unit_rows), each row's
    # largest |entry| and its norm after dividing by it; a row of zeros stays zeros
    pytest.importorskip("triton")
    from snnl.loss.backends.reference import unit_rows

    x = torch.randn(37, 21) * torch.logspace(-3, 3, 21)
    centre = x.median(0).values
    ops, aux = _prepared(x, "tf32x3", euclidean=True, centre=centre)
    hi, lo = ops[:, 0], ops[:, 1]
    assert ops.shape == (37, 2, 32) and not hi[:, 21:].any() and not lo[:, 21:].any()
    assert not (hi.view(torch.int32) & 0x1FFF).any()
    torch.testing.assert_close(hi[:, :21] + lo[:, :21], x - centre, rtol=0, atol=0)
    assert (lo[:, :21].abs() <= hi[:, :21].abs() * 2.0**-11).all()
    torch.testing.assert_close(aux[0], (x - centre).pow(2).sum(1), rtol=1e-6, atol=0)
    ops, aux = _prepared(x * 1e30, "tf32x3")
    torch.testing.assert_close(ops[:, 0, :21] + ops[:, 1, :21], unit_rows(x), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(aux[0], (x * 1e30).abs().amax(1), rtol=0, atol=0)
    torch.testing.assert_close(aux[0] * aux[1], (x.double() * 1e30).norm(dim=1).float(), rtol=1e-6, atol=0)
    ops, aux = _prepared(torch.zeros(3, 4), "tf32x3")
    assert not ops.any() and not aux.any()
