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

from .loss_cases import FORMS, LABEL_PATTERNS, assert_close_rows, assert_close_scaled, compare

SHAPES = [(2, 1), (3, 5), (17, 3), (33, 16), (65, 40), (100, 33), (130, 130), (300, 7)]
TEMPERATURES = [0.01, 0.1, 1.0, 100.0]

# The covering grid: every label pattern, temperature, distance, eps value and
# shape, paired so that the grid stays around a minute on the Triton
# interpreter (40 cases per backend).
CASES = [
    (b, d, pattern, temperature, distance, eps)
    for (b, d), pattern, (temperature, distance, eps) in zip(
        itertools.cycle(SHAPES),
        LABEL_PATTERNS * 8,
        itertools.product(TEMPERATURES, ["cosine", "euclidean"], [1e-5, 0.0]),
    )
]


@pytest.mark.parametrize("b,d,pattern,temperature,distance,eps", CASES)
def test_backend_matches_reference(backend, small_tiles, b, d, pattern, temperature, distance, eps):
    # small tiles: 7-row blocks on the CPU path (diagonal and off-diagonal
    # block pairs, one-hot sums for few classes, pairwise labels for many),
    # 16 x 16 tiles and 64-wide feature chunks for the fused kernels
    compare(backend, b, d, pattern, temperature, distance, eps)


@pytest.mark.parametrize("b,d,pattern,temperature,distance,eps", CASES[::5])
def test_backend_at_its_own_tiles_matches_reference(backend, b, d, pattern, temperature, distance, eps):
    # the tiles the backend picks (the CPU path: its eager one-tile path for these sizes)
    compare(backend, b, d, pattern, temperature, distance, eps)


@pytest.mark.parametrize("temperature", [0.01, 1.0])
@pytest.mark.parametrize("pattern", ["few_classes", "all_distinct"])
def test_a_batch_of_several_default_tiles_matches_reference(backend, pattern, temperature):
    # above one block of 512 rows: the CPU path's tiled operator at its own blocks
    if backend == "triton":
        pytest.skip("the fused kernels' tiles are exercised by the grids (the interpreter is slow at this size)")
    for distance, eps in (("cosine", 1e-5), ("euclidean", 0.0)):
        compare(backend, 1100, 5, pattern, temperature, distance, eps)


# dtype -> (loss rtol, gradient rtol) against the float64 reference of the same
# rounded inputs: float64's summation order; float32's rounding, amplified by
# 1 / T in the logits; half inputs: the fused kernels keep them half (their
# unit rows rounded to 11 or 8 bits), the other backends compute in fp32
DTYPES = {
    torch.float64: (1e-9, 1e-8),
    torch.float32: (2e-5, 1e-4),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (3e-2, 6e-2),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_temperature_distance_form_grid(backend, small_tiles, dtype, temperature, distance, form):
    from snnl.loss import registry

    try:
        registry.BACKENDS[backend].check_usable(torch.empty(1, 1, dtype=dtype))
    except TypeError as refused:  # bf16 under the Triton interpreter: refused, never computed wrongly
        assert "bfloat16" in str(refused)
        return
    rtol, grad_rtol = DTYPES[dtype]
    scale = max(1.0, 0.1 / temperature) * (10.0 if dtype == torch.float32 and temperature < 1 else 1.0)
    compare(backend, 60, 24, "few_classes", temperature, distance, 1e-5, dtype, rtol * scale, grad_rtol * scale, form)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "mean_over_positives"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_public_api_reductions(backend, reduction, eps):
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


@pytest.mark.parametrize("form", ["keys", "slices"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_queries_against_keys(backend, small_tiles, form, distance, eps):
    # keys that are not the queries (a memory bank: nothing left out,
    # gradients to both; a query with no same-class key), and how
    # torch.distributed uses the loss: each part of the batch against the
    # whole batch, query i being key offset + i, the parts' results summed
    compare(backend, 70, 19, "singletons", 0.3, distance, eps, form=form)


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
