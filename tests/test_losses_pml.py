"""snnl.losses against pytorch-metric-learning itself, and the forms behind them."""

import pytest
import torch

from snnl.loss import ntxent_loss, soft_nearest_neighbor_loss, supcon_loss
from snnl.loss.forms import positive_logit_means

pml = pytest.importorskip("pytorch_metric_learning.losses")
from snnl import losses  # noqa: E402


def _batch(n=24, d=6, classes=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return z, y


def _both(ours, theirs, *tensors):
    """(our value, their value, our gradients, their gradients) on fresh leaves."""
    values, grads = [], []
    for loss in (ours, theirs):
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        value = loss(*leaves)
        values.append(value.detach())
        grads.append(torch.autograd.grad(value, leaves))
    return values, grads


def _close(values, grads, atol=1e-12):
    torch.testing.assert_close(values[0], values[1].to(values[0].dtype), rtol=0, atol=atol)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


CASES = {
    "shared labels": dict(n=24, classes=4),
    "many positives": dict(n=30, classes=2),
    "rows without positives": dict(n=12, classes=10),
}
CLASSES = {
    "ntxent": (lambda t: losses.NTXentLoss(temperature=t), lambda t: pml.NTXentLoss(temperature=t)),
    "supcon": (lambda t: losses.SupConLoss(temperature=t), lambda t: pml.SupConLoss(temperature=t)),
    "nca": (lambda t: losses.NCALoss(softmax_scale=1 / t), lambda t: pml.NCALoss(softmax_scale=1 / t)),
}


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_each_loss_equals_pytorch_metric_learning_in_float64(name, case, temperature):
    ours, theirs = (make(temperature) for make in CLASSES[name])
    z, y = _batch(**CASES[case])
    values, grads = _both(lambda e: ours(e, y), lambda e: theirs(e, y), z)
    _close(values, grads)
    # and with references (a memory bank): no pair is left out
    ref, ref_y = _batch(n=10, seed=1, classes=4)
    values, grads = _both(
        lambda e, r: ours(e, y, ref_emb=r, ref_labels=ref_y),
        lambda e, r: theirs(e, y, ref_emb=r, ref_labels=ref_y),
        z,
        ref,
    )
    _close(values, grads)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("symmetric", [True, False])
def test_self_supervised_views_equal_pytorch_metric_learning(name, views, symmetric):
    from pytorch_metric_learning.losses import SelfSupervisedLoss as TheirWrapper

    ours = losses.SelfSupervisedLoss(CLASSES[name][0](0.2), symmetric=symmetric)
    theirs = TheirWrapper(CLASSES[name][1](0.2), symmetric=symmetric)
    z, _ = _batch(n=16)
    other, _ = _batch(n=16, seed=3)
    values, grads = _both(ours, theirs, z, other)
    _close(values, grads)
    if views == 3:  # three views: each sample's views share a label, several positives per row
        third, _ = _batch(n=16, seed=4)
        labels = torch.arange(16).repeat(3)
        values, grads = _both(
            lambda a, b, c: CLASSES[name][0](0.2)(torch.cat([a, b, c]), labels),
            lambda a, b, c: CLASSES[name][1](0.2)(torch.cat([a, b, c]), labels),
            z,
            other,
            third,
        )
        _close(values, grads)


def test_the_forms_differ_where_a_row_has_several_positives_and_agree_with_one():
    z, y = _batch(n=20, classes=3)
    l_in = soft_nearest_neighbor_loss(z, y, 0.3, eps=0.0, reduction="mean_over_positives")
    assert abs(float(supcon_loss(z, y, 0.3)) - float(l_in)) > 0.05
    assert abs(float(ntxent_loss(z, y, 0.3)) - float(l_in)) > 0.05
    # two views, no labels: one positive each, and the three forms are one
    views = torch.randn(10, 2, 5, dtype=torch.float64)
    one = soft_nearest_neighbor_loss(views, temperature=0.3, eps=0.0)
    torch.testing.assert_close(supcon_loss(views, temperature=0.3), one, rtol=0, atol=1e-13)
    torch.testing.assert_close(ntxent_loss(views, temperature=0.3), one, rtol=0, atol=1e-13)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("square", [True, False])
def test_the_positive_logit_means_are_the_pairs_mean(distance, square):
    # the O(b d) closed form against the mean over the pair matrix, far from the origin too
    from snnl.loss.backends.reference import pairwise_distance
    from snnl.loss.options import Inputs

    z, y = _batch(n=30, classes=4)
    z = z * 0.1 + 100.0
    keys, key_labels = (None, None) if square else _batch(n=14, seed=2, classes=5)
    if keys is not None:
        keys = keys * 0.1 + 100.0
    t = torch.tensor(0.5, dtype=torch.float64)
    mean, count = positive_logit_means(Inputs(z, keys, y, key_labels, t), distance)
    logits = -pairwise_distance(z, keys, distance) / t
    same = y[:, None] == (y if square else key_labels)[None, :]
    if square:
        same.fill_diagonal_(False)
    expected = torch.where(same, logits, 0.0).sum(1) / same.sum(1).clamp_min(1)
    assert torch.equal(count, same.sum(1))
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-10)


def test_supcon_on_every_backend_against_pytorch_metric_learning(backend, tiled):
    # L_out on each backend's log-sum-exps (the fused kernels under the interpreter here, the CPU
    # path's tiles rather than its one-tile eager path): float64 against PML, loss and gradient,
    # and float32 against that float64
    z, y = _batch(n=70, d=16, classes=6)
    values, grads = _both(
        lambda e: supcon_loss(e, y, 0.1, backend=backend), lambda e: pml.SupConLoss(temperature=0.1)(e, y), z
    )
    _close(values, grads)
    single = supcon_loss(z.float(), y, 0.1, backend=backend)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), values[0], rtol=2e-6, atol=0)


def test_low_temperature_float32_is_exact_where_pytorch_metric_learning_saturates():
    z, y = _batch(n=64, d=8, classes=4)
    truth = ntxent_loss(z, y, 0.01)
    ours = losses.NTXentLoss(temperature=0.01)(z.float(), y)
    theirs = pml.NTXentLoss(temperature=0.01)(z.float(), y)
    assert abs(float(ours) - float(truth)) < 1e-5 * float(truth)
    assert abs(float(theirs) - float(truth)) > 0.01 * float(truth)  # its log(ratio + tiny) saturates


def test_what_pytorch_metric_learning_offers_and_these_do_not_is_refused():
    z, y = _batch()
    with pytest.raises(ValueError, match="takes no indices_tuple"):
        losses.NTXentLoss()(z, y, indices_tuple=(y, y, y, y))
    with pytest.raises(ValueError, match="does not take distance.*distance='euclidean'"):
        losses.SupConLoss(distance=object())
    with pytest.raises(ValueError, match="does not take reducer"):
        losses.NCALoss(reducer=object())
    with pytest.raises(ValueError, match="needs labels.*SelfSupervisedLoss"):
        losses.SupConLoss()(z)
    with pytest.raises(ValueError, match="ref_emb needs its ref_labels"):
        losses.NTXentLoss()(z, y, ref_emb=z)
    with pytest.raises(ValueError, match="wraps snnl.losses"):
        losses.SelfSupervisedLoss(pml.NTXentLoss())
    with pytest.raises(ValueError, match="reduction must be one of"):
        supcon_loss(z, y, reduction="mean_over_positives")
    with pytest.raises(ValueError, match="block_rows must be an integer >= 1"):
        ntxent_loss(z, y, block_rows=0)


@pytest.mark.parametrize("form", [supcon_loss, ntxent_loss])
def test_the_forms_compile_without_graph_breaks_and_take_second_order_gradients(form):
    z, y = _batch(n=20, d=5)
    expected = form(z, y, 0.4)
    compiled = torch.compile(lambda x: form(x, y, 0.4, check_values=False), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(z), expected, rtol=0, atol=1e-13)
    leaf = z[:8].clone().requires_grad_(True)
    labels = y[:8]
    assert torch.autograd.gradgradcheck(lambda x: form(x, labels, 0.4), (leaf,))
    grad = torch.func.grad(lambda x: form(x, labels, 0.4, check_values=False))(leaf.detach())
    (expected_grad,) = torch.autograd.grad(form(leaf, labels, 0.4), leaf)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-13)


def test_one_positive_per_row_by_its_form_takes_the_backends_and_gives_the_pairs_value():
    # two views without labels, keys without labels: L_in on a backend; the same as the pair pass
    views = torch.randn(12, 2, 5, dtype=torch.float64)
    flat, ids = views.reshape(24, 5), torch.arange(12).repeat_interleave(2)
    torch.testing.assert_close(ntxent_loss(views, temperature=0.2), ntxent_loss(flat, ids, 0.2), rtol=0, atol=1e-13)
    keys = torch.randn(12, 5, dtype=torch.float64)
    torch.testing.assert_close(
        ntxent_loss(views[:, 0], temperature=0.2, keys=keys),
        ntxent_loss(views[:, 0], torch.arange(12), 0.2, keys=keys, key_labels=torch.arange(12)),
        rtol=0,
        atol=1e-13,
    )


@pytest.mark.parametrize("form", [supcon_loss, ntxent_loss])
def test_the_forms_keep_their_precision_under_autocast(form):
    z, y = _batch(n=40, d=8, dtype=torch.float32)
    expected = form(z, y, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = form(z, y, 0.2)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)


def test_ntxent_memory_is_blocks_of_rows():
    # the blocks are recomputed in the backward pass: what autograd keeps is O(rows), not rows x keys
    z, y = _batch(n=2048, d=8, classes=8, dtype=torch.float32)
    z.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = ntxent_loss(z, y, 0.1, block_rows=256)
    assert max(saved) < 256 * 2048  # never a block's logits, let alone the whole matrix
    loss.backward()
    assert torch.isfinite(z.grad).all()
