"""Label-free positives: the views (snnl.train.augment) and the nearest neighbours (snnl.train.positives)."""

import math

import numpy as np
import pytest
import torch

from snnl.optional import umap_learn_status
from snnl.train import augment, positives
from snnl.train.positives import Partners, nearest_neighbours, neighbour_table


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


def test_several_partners_per_anchor_come_in_blocks():
    """partners per anchor: every anchor's first partner, then every anchor's
    second, ...; each a neighbour of its anchor; a process's rows are what a
    single process draws for them, block by block."""
    x = _images(n=40)
    index = torch.arange(0, 40, 3)
    rows = torch.arange(len(index))
    neighbours = Partners("neighbours", x, neighbours=4, seed=0, image_shape=(28, 28), per_anchor=3)
    drawn = neighbours(index, rows, "cpu").reshape(3, len(index), -1)
    own = neighbours.neighbours[index]
    for block in drawn:
        assert all(any(torch.equal(d, x[j]) for j in row) for d, row in zip(block, own))

    def draw(rows):
        return Partners("neighbour-views", x, neighbours=4, seed=0, image_shape=(28, 28), per_anchor=3)(
            index, rows, "cpu"
        ).reshape(3, len(rows), -1)

    assert torch.equal(draw(rows)[:, 7:], draw(rows[7:]))
    with pytest.raises(ValueError, match="partners per anchor must be an integer >= 1"):
        Partners("neighbours", x, neighbours=4, seed=0, image_shape=None, per_anchor=0)


def test_euclidean_nearest_neighbours_are_the_closest_other_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    found = nearest_neighbours(x, 4, metric="euclidean")
    distance = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    expected = np.argsort(distance, axis=1, kind="stable")[:, :4]
    assert np.mean([set(a) == set(b) for a, b in zip(found, expected)]) > 0.99
    # the cosine neighbours of these points are others: the metric is used
    assert np.mean([set(a) == set(b) for a, b in zip(nearest_neighbours(x, 4), expected)]) < 0.9
    with pytest.raises(ValueError, match="metric must be one of"):
        nearest_neighbours(x, 4, metric="manhattan")


@pytest.mark.skipif(not umap_learn_status()[0], reason="umap-learn is not installed")
def test_umap_neighbours_stay_in_their_cluster():
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=300, centers=3, n_features=20, cluster_std=1.0, random_state=0)
    table = neighbour_table(x.astype(np.float32), 5, "umap", seed=0)
    assert table.shape == (300, 5) and (table != np.arange(300)[:, None]).all()
    assert (y[table] == y[:, None]).mean() > 0.99
    assert np.array_equal(table, neighbour_table(x.astype(np.float32), 5, "umap", seed=0))  # seeded
    with pytest.raises(ValueError, match="neighbour_space must be one of"):
        neighbour_table(x, 5, "pixels")


def test_the_neighbour_table_travels_in_the_partners_state(monkeypatch):
    x = _images(n=40)
    index, rows = torch.arange(0, 40, 3), torch.arange(14)
    first = Partners("neighbours", x, neighbours=4, seed=0, image_shape=(28, 28))
    assert "neighbours" not in first.state()  # not searched before it is needed
    before = first.generator.get_state()
    drawn = first(index, rows, "cpu")
    state = first.state()
    assert state["neighbours"].dtype == torch.int32 and torch.equal(state["neighbours"].long(), first.neighbours)

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(positives, "neighbour_table", no_search)
    restored = Partners("neighbours", x, neighbours=4, seed=0, image_shape=(28, 28))
    restored.set_state(state | {"generator": before})
    assert torch.equal(restored(index, rows, "cpu"), drawn)
    with pytest.raises(ValueError, match=r"neighbour table is \(40, 4\); these 40 points with 3 neighbours"):
        Partners("neighbours", x, neighbours=3, seed=0, image_shape=(28, 28)).set_state(state)
    with pytest.raises(ValueError, match="'views' partners are views of the anchor itself"):
        _ = Partners("views", x, neighbours=3, seed=0, image_shape=(28, 28)).neighbours


def test_a_partners_state_of_the_generator_alone_still_restores():
    # checkpoints written before the neighbour table was kept hold the generator's state alone
    x = _images(n=40)
    old = Partners("neighbours", x, neighbours=4, seed=3, image_shape=(28, 28))
    restored = Partners("neighbours", x, neighbours=4, seed=9, image_shape=(28, 28))
    restored.set_state(old.generator.get_state())
    index, rows = torch.arange(10), torch.arange(10)
    assert torch.equal(restored(index, rows, "cpu"), old(index, rows, "cpu"))
