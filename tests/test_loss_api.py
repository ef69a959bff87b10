"""The forms of the loss that its peers have (pytorch-metric-learning, TF
Similarity, SupCon), each against a formula written out here: keys that are
not the batch, multi-view batches with and without labels, ignore_index,
weights, the mean over rows with a positive, a shape-(1,) temperature."""

import math

import pytest
import torch
import torch.nn.functional as F

from snnl import SNNLoss, soft_nearest_neighbor_loss

from .loss_cases import assert_close_scaled


def _rows(queries, q_labels, keys, k_labels, t, eps=1e-5, leave_out_self=False):
    """Per query: -log(eps + N / (eps + S)) over the keys, cosine distance."""
    logits = (F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T - 1) / t
    if leave_out_self:
        logits = logits.masked_fill(torch.eye(len(queries), dtype=torch.bool), -math.inf)
    same = q_labels[:, None] == k_labels[None, :]
    s = torch.logsumexp(logits, 1)
    n = torch.logsumexp(logits.masked_fill(~same, -math.inf), 1)
    if eps == 0:
        return s - n
    return -torch.log(eps + torch.exp(n) / (eps + torch.exp(s)))


def _batch(b=30, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, 4, (b,), generator=g)


def test_keys_that_are_not_the_batch(backend):
    # a memory bank: every query against every key, nothing left out, gradients to both
    q, q_labels = _batch(30, seed=1)
    k, k_labels = _batch(45, seed=2)
    q, k = q.requires_grad_(True), k.requires_grad_(True)
    loss = soft_nearest_neighbor_loss(q, q_labels, 0.4, keys=k, key_labels=k_labels, backend=backend)
    expected = _rows(q, q_labels, k, k_labels, 0.4).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(loss, [q, k]), torch.autograd.grad(expected, [q, k])):
        assert_close_scaled(got, want, 1e-9)


def test_multi_view_without_labels_is_nt_xent(backend):
    # two views per sample, each sample's other view its positive: with eps = 0
    # and the cosine distance the loss is SimCLR's NT-Xent at temperature T
    # (the shift -1/T of the logits cancels)
    g = torch.Generator().manual_seed(3)
    views = torch.randn(16, 2, 9, generator=g, dtype=torch.float64, requires_grad=True)
    loss = soft_nearest_neighbor_loss(views, None, 0.2, eps=0.0, backend=backend)
    x = F.normalize(views.reshape(32, 9), dim=1)
    similarity = (x @ x.T / 0.2).masked_fill(torch.eye(32, dtype=torch.bool), -math.inf)
    partner = torch.arange(32) ^ 1  # rows 2i and 2i + 1 are sample i's views
    nt_xent = F.cross_entropy(similarity, partner)
    torch.testing.assert_close(loss, nt_xent, rtol=1e-10, atol=1e-12)
    assert_close_scaled(torch.autograd.grad(loss, views)[0], torch.autograd.grad(nt_xent, views)[0], 1e-9)


def test_multi_view_with_labels_is_supcon_style(backend):
    # views share their sample's label: the square loss of the flattened views
    views = _batch(40, seed=4)[0].reshape(20, 2, 7)
    labels = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(5))
    loss = soft_nearest_neighbor_loss(views, labels, 0.5, reduction="none", backend=backend)
    flat = views.reshape(40, 7)
    expected = _rows(flat, labels.repeat_interleave(2), flat, labels.repeat_interleave(2), 0.5, leave_out_self=True)
    assert loss.shape == (20, 2)
    torch.testing.assert_close(loss.reshape(-1), expected, rtol=1e-10, atol=1e-12)


def test_keys_as_the_other_view_without_labels(backend):
    # pytorch-metric-learning's SelfSupervisedLoss form: key i is a view of sample i
    q, _ = _batch(25, seed=6)
    k = q + 0.1 * _batch(25, seed=7)[0]
    ids = torch.arange(25)
    loss = soft_nearest_neighbor_loss(q, None, 0.3, keys=k, backend=backend, reduction="none")
    torch.testing.assert_close(loss, _rows(q, ids, k, ids, 0.3), rtol=1e-10, atol=1e-12)
    views = torch.stack([q, q + 0.05], 1)  # several views of each query sample
    loss = soft_nearest_neighbor_loss(views, None, 0.3, keys=k, backend=backend, reduction="none")
    expected = _rows(views.reshape(50, 7), ids.repeat_interleave(2), k, ids, 0.3)
    torch.testing.assert_close(loss.reshape(-1), expected, rtol=1e-10, atol=1e-12)


def test_ignore_index_rows_have_no_loss_but_stay_keys(backend):
    z, labels = _batch(40, seed=8)
    labels[::5] = -100
    z.requires_grad_(True)
    rows = soft_nearest_neighbor_loss(z, labels, 0.5, ignore_index=-100, reduction="none", backend=backend)
    full = _rows(z, labels, z, labels, 0.5, leave_out_self=True)
    kept = labels != -100
    assert torch.equal(rows[~kept], torch.zeros(8, dtype=torch.float64))
    torch.testing.assert_close(rows[kept], full[kept], rtol=1e-10, atol=1e-12)  # the ignored rows were keys
    loss = soft_nearest_neighbor_loss(z, labels, 0.5, ignore_index=-100, backend=backend)
    torch.testing.assert_close(loss, full[kept].mean(), rtol=1e-10, atol=1e-12)
    assert_close_scaled(torch.autograd.grad(loss, z)[0], torch.autograd.grad(full[kept].mean(), z)[0], 1e-9)


def test_weights(backend):
    z, labels = _batch(30, seed=9)
    w = torch.rand(30, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    w[3] = 0.0
    z.requires_grad_(True)
    rows = _rows(z, labels, z, labels, 0.5, leave_out_self=True)
    loss = soft_nearest_neighbor_loss(z, labels, 0.5, weight=w, backend=backend)
    expected = (w * rows).sum() / w.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    assert_close_scaled(torch.autograd.grad(loss, z)[0], torch.autograd.grad(expected, z)[0], 1e-9)
    total = soft_nearest_neighbor_loss(z, labels, 0.5, weight=w, reduction="sum", backend=backend)
    torch.testing.assert_close(total, (w * rows).sum(), rtol=1e-10, atol=1e-12)
    # per view of a multi-view batch
    views = z.reshape(15, 2, 7)
    per_view = torch.rand(15, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    got = soft_nearest_neighbor_loss(views, labels[::2], 0.5, weight=per_view, reduction="none", backend=backend)
    plain = soft_nearest_neighbor_loss(views, labels[::2], 0.5, reduction="none", backend=backend)
    torch.testing.assert_close(got, plain * per_view)


def test_mean_over_positives_skips_rows_without_a_same_class_key(backend):
    z, labels = _batch(30, seed=12)
    labels[:4] = torch.arange(100, 104)  # singletons: no positive
    rows = _rows(z, labels, z, labels, 0.5, leave_out_self=True)
    loss = soft_nearest_neighbor_loss(z, labels, 0.5, reduction="mean_over_positives", backend=backend)
    torch.testing.assert_close(loss, rows[4:].mean(), rtol=1e-10, atol=1e-12)
    # the authors' convention counts the singletons' -log(eps)
    default = soft_nearest_neighbor_loss(z, labels, 0.5, backend=backend)
    torch.testing.assert_close(default, rows.mean(), rtol=1e-10, atol=1e-12)
    assert rows[:4].tolist() == pytest.approx([-math.log(1e-5)] * 4)


def test_shape_one_temperature_parameter(backend):
    z, labels = _batch()
    t = torch.nn.Parameter(torch.full((1,), 0.5, dtype=torch.float64))
    soft_nearest_neighbor_loss(z, labels, t, backend=backend).backward()
    expected = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    soft_nearest_neighbor_loss(z, labels, expected, backend="reference").backward()
    assert t.grad.shape == (1,)
    torch.testing.assert_close(t.grad[0], expected.grad, rtol=1e-9, atol=1e-12)


def test_module_takes_the_per_call_arguments():
    q, q_labels = _batch(20, seed=13)
    k, k_labels = _batch(25, seed=14)
    w = torch.rand(20, dtype=torch.float64)
    module = SNNLoss(0.4, reduction="sum", ignore_index=3)
    torch.testing.assert_close(
        module(q, q_labels, keys=k, key_labels=k_labels, weight=w),
        soft_nearest_neighbor_loss(
            q, q_labels, 0.4, keys=k, key_labels=k_labels, weight=w, reduction="sum", ignore_index=3
        ),
    )
    assert "ignore_index=3" in repr(module)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda z, y: soft_nearest_neighbor_loss(z, None), ValueError, "only for a multi-view batch"),
        (lambda z, y: soft_nearest_neighbor_loss(z, y, keys=z), ValueError, "keys need key_labels"),
        (lambda z, y: soft_nearest_neighbor_loss(z, y, key_labels=y), ValueError, "key_labels were given without keys"),
        (lambda z, y: soft_nearest_neighbor_loss(z, y, keys=z[:, :3], key_labels=y), ValueError, "keys must have z's"),
        (
            lambda z, y: soft_nearest_neighbor_loss(z, y, keys=z, key_labels=y[:4]),
            ValueError,
            r"key_labels must have shape \(30,\)",
        ),
        (
            lambda z, y: soft_nearest_neighbor_loss(z, y, weight=torch.ones(4, dtype=torch.float64)),
            ValueError,
            r"weight must have shape \(30,\) \(one per row\), got \(4,\)",
        ),
        (
            lambda z, y: soft_nearest_neighbor_loss(z.reshape(15, 2, 7), y[:15], weight=torch.ones(4)),
            ValueError,
            r"weight must have shape \(15,\) \(per sample\) or \(15, 2\) \(per view\)",
        ),
        (
            lambda z, y: soft_nearest_neighbor_loss(z, y, weight=-torch.ones(30, dtype=torch.float64)),
            ValueError,
            "weight must be finite and >= 0",
        ),
        (lambda z, y: soft_nearest_neighbor_loss(z, y, ignore_index=1.5), TypeError, "ignore_index must be an integer"),
        (lambda z, y: soft_nearest_neighbor_loss(z.reshape(30, 1, 7), None), ValueError, "views >= 2"),
    ],
)
def test_bad_forms_are_named(call, error, match):
    z, y = _batch()
    with pytest.raises(error, match=match):
        call(z, y)
