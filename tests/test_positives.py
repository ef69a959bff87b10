"""Label-free positives: the views (snnl.augment) and the nearest neighbours (snnl.positives)."""

import math

import numpy as np
import pytest
import torch

from snnl import augment
from snnl.positives import Partners, nearest_neighbours


def _images(n=6, side=28, seed=0):
    images = torch.zeros(n, side, side)
    images[:, 8:20, 10:18] = torch.rand(n, 12, 8, generator=torch.Generator().manual_seed(seed))
    return images.reshape(n, -1)


def test_a_view_without_movement_is_the_image():
    x = _images()
    n = len(x)
    still = (torch.zeros(n), torch.ones(n), torch.zeros(n, 2))
    assert torch.allclose(augment.image_views(x, (28, 28), still), x, atol=1e-6)
    kept, quiet = torch.ones(n, 784, dtype=torch.bool), torch.zeros(n, 784)
    assert torch.equal(augment.tabular_views(x, x.std(0), (kept, quiet)), x)


def test_a_shift_moves_the_image_by_whole_pixels():
    # affine_grid's coordinates span [-1, 1] over 28 pixels: 2 / 28 per pixel; a
    # positive x shift samples to the right, so the content moves left
    x = _images(n=1)
    draws = (torch.zeros(1), torch.ones(1), torch.tensor([[3 * 2 / 28, 0.0]]))
    moved = augment.image_views(x, (28, 28), draws).reshape(28, 28)
    assert torch.allclose(moved, torch.roll(x.reshape(28, 28), -3, dims=1), atol=1e-5)
    # the largest shift drawn is SHIFT of the side: 3 pixels of 28 (rounded down)
    assert math.floor(augment.SHIFT * 28) == 3


def test_a_rotation_turns_the_image():
    x = _images(n=1)
    quarter = (torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1, 2))
    turned = augment.image_views(x, (28, 28), quarter).reshape(28, 28)
    image = x.reshape(28, 28)
    assert torch.allclose(turned, torch.rot90(image, 1, dims=(0, 1)), atol=1e-5) or torch.allclose(
        turned, torch.rot90(image, -1, dims=(0, 1)), atol=1e-5
    )


def test_draws_are_seeded_and_within_their_ranges():
    first = augment.draw("image", 500, 784, torch.Generator().manual_seed(3))
    again = augment.draw("image", 500, 784, torch.Generator().manual_seed(3))
    other = augment.draw("image", 500, 784, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    angle, scale, shift = first
    assert angle.abs().max() <= math.radians(augment.ROTATION_DEGREES) and (scale - 1).abs().max() <= augment.SCALE
    assert shift.abs().max() <= 2 * augment.SHIFT
    kept, _ = augment.draw("tabular", 2000, 10, torch.Generator().manual_seed(3))
    assert abs(1 - kept.float().mean().item() - augment.FEATURE_DROPOUT) < 0.01


def test_nearest_neighbours_are_the_most_cosine_similar_other_rows():
    rng = np.random.default_rng(0)
    x = rng.random((300, 20), dtype=np.float32)
    x[7] = x[3]  # an exact duplicate: each is the other's nearest, neither its own
    found = nearest_neighbours(x, 5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    assert (found != np.arange(300)[:, None]).all()
    assert found[3, 0] == 7 and found[7, 0] == 3
    # the same sets (ties of float32 similarities may order differently)
    assert np.mean([set(a) == set(b) for a, b in zip(found, expected)]) > 0.99
    with pytest.raises(ValueError, match="10 nearest neighbours asked for, among 10 points"):
        nearest_neighbours(x[:10], 10)


def test_partners_are_neighbours_views_or_both():
    x = _images(n=40)
    index = torch.arange(0, 40, 3)
    rows = torch.arange(len(index))
    for kind in ("views", "neighbours", "neighbour-views"):
        partners = Partners(kind, x, neighbours=4, seed=0, image_shape=(28, 28))
        drawn = partners(index, rows, "cpu")
        assert drawn.shape == (len(index), 784)
        if kind == "neighbours":
            own = partners.neighbours[index]
            assert all(any(torch.equal(d, x[j]) for j in row) for d, row in zip(drawn, own))
    # a process's rows of the global batch are what a single process draws for them
    whole = Partners("neighbour-views", x, neighbours=4, seed=0, image_shape=(28, 28))(index, rows, "cpu")
    second_half = Partners("neighbour-views", x, neighbours=4, seed=0, image_shape=(28, 28))(index, rows[7:], "cpu")
    assert torch.equal(whole[7:], second_half)
