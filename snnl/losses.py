"""pytorch-metric-learning's softmax losses, called as it calls them, computed as snnl does.

    from snnl.losses import NTXentLoss, SupConLoss, NCALoss, SelfSupervisedLoss
    loss = SupConLoss(temperature=0.1)(embeddings, labels)
    loss = SelfSupervisedLoss(NTXentLoss())(embeddings, ref_emb)

Each class takes pytorch-metric-learning's constructor arguments and its
``forward(embeddings, labels=None, indices_tuple=None, ref_emb=None,
ref_labels=None)``, with its defaults: cosine similarity of the normalised
embeddings (squared Euclidean distance of the normalised embeddings for
NCA), and its reducers (the mean over the positive pairs for NT-Xent, over
the rows with a positive, and a non-zero loss, for SupCon, over the rows
with a positive for NCA).  In float64 they give its numbers to about 1e-15
(``tests/test_losses_pml.py``); where its arithmetic is not exact they give
the exact value instead: at low temperatures in float32 its NT-Xent adds
1e-38-ish ``small_val`` to a ratio that has underflowed (T = 0.01 gave 87.3
where the loss is 159.6), and its NCA leaves out rows whose same-class
probability underflows to 0.  What it offers and these do not (miners'
``indices_tuple``, other distances, reducers, regularisers) is refused with
a message that names the alternative.

The forms (``snnl.loss.forms``): NT-Xent is the per-positive-pair form
(``snnl.loss.ntxent_loss``), SupCon L_out (``snnl.loss.supcon_loss``, on
the fused backends' log-sum-exps), NCA SNNL's own L_in with eps = 0
(``soft_nearest_neighbor_loss``; T = 1 / (2 softmax_scale), as the squared
distance of unit vectors is twice the cosine distance).  None of them makes
the (positive pairs x negative pairs) matrix pytorch-metric-learning's
NT-Xent does.
"""

from __future__ import annotations

import torch

from .loss import ntxent_loss, soft_nearest_neighbor_loss, supcon_loss

_REFUSED = {
    "distance": "its default distance is the one computed; for the squared Euclidean distance call "
    "snnl.loss.supcon_loss / ntxent_loss / soft_nearest_neighbor_loss with distance='euclidean'",
    "reducer": "its default reducer is the one computed; reduction='none' on snnl.loss.supcon_loss / "
    "ntxent_loss gives the per-row terms to reduce as you need",
    "embedding_regularizer": "add the regulariser's term to the loss yourself",
    "embedding_reg_weight": "add the regulariser's term to the loss yourself",
}


class _PMLForm(torch.nn.Module):
    """The arguments pytorch-metric-learning's losses take, checked."""

    def __init__(self, **kwargs):
        super().__init__()
        for name, value in kwargs.items():
            if name == "collect_stats":
                continue  # statistics for its logging: nothing to collect here
            if name not in _REFUSED:
                raise TypeError(f"{type(self).__name__} got an unexpected keyword argument {name!r}")
            if value is not None and not (name == "embedding_reg_weight" and value == 1):
                raise ValueError(f"{type(self).__name__} does not take {name}: {_REFUSED[name]}")

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is not None:
            raise ValueError(
                f"{type(self).__name__} computes the loss over all pairs and takes no indices_tuple "
                "(a miner's selection); use pytorch-metric-learning's own loss with a miner"
            )
        if labels is None:
            raise ValueError(
                f"{type(self).__name__} needs labels, as pytorch-metric-learning's does; for two views "
                "of each sample without labels use SelfSupervisedLoss(...)(embeddings, ref_emb)"
            )
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
            raise ValueError("embeddings must be a (batch, features) tensor")
        if ref_emb is None and ref_labels is not None:
            raise ValueError("ref_labels were given without ref_emb")
        if ref_emb is not None and ref_labels is None:
            raise ValueError(
                "ref_emb needs its ref_labels (pytorch-metric-learning then pairs the embeddings' labels "
                "with the references by position, leaving out the diagonal: pass ref_labels=labels for "
                "that pairing without the exclusion, or SelfSupervisedLoss(..., symmetric=False))"
            )
        labels = torch.as_tensor(labels, device=embeddings.device)
        if ref_labels is not None:
            ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
        return self.compute(embeddings, labels, ref_emb, ref_labels)

    def compute(self, embeddings, labels, ref_emb, ref_labels):
        raise NotImplementedError


class NTXentLoss(_PMLForm):
    """pytorch-metric-learning's ``NTXentLoss``: per positive pair, against the
    anchor's negatives, averaged over the pairs (``snnl.loss.ntxent_loss``)."""

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def compute(self, embeddings, labels, ref_emb, ref_labels):
        return ntxent_loss(embeddings, labels, self.temperature, keys=ref_emb, key_labels=ref_labels)


class SupConLoss(_PMLForm):
    """pytorch-metric-learning's ``SupConLoss``: L_out, averaged over the rows
    whose loss is not zero (rows without a positive have none)
    (``snnl.loss.supcon_loss``)."""

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self.temperature = temperature

    def compute(self, embeddings, labels, ref_emb, ref_labels):
        rows = supcon_loss(embeddings, labels, self.temperature, keys=ref_emb, key_labels=ref_labels, reduction="none")
        # its loss is 0 unless the batch has a positive pair (a row with a positive: a row
        # without one has loss 0 here) and a negative pair (two different labels among the
        # anchors and the keys), both found without a pair matrix
        every = labels if ref_labels is None else torch.cat([labels, ref_labels])
        some = (rows > 0).any() & (every.min() != every.max())
        counted = some & (rows > 0)  # AvgNonZeroReducer: the mean of the positive losses
        total = torch.where(counted, rows, 0.0).sum()
        n = counted.sum()
        return total / torch.where(n > 0, n, 1).to(total.dtype)


class NCALoss(_PMLForm):
    """pytorch-metric-learning's ``NCALoss``: SNNL with eps = 0 on normalised
    embeddings at T = 1 / (2 softmax_scale), averaged over the rows with a
    same-class neighbour (all of them: none is lost to underflow)."""

    def __init__(self, softmax_scale=1, **kwargs):
        super().__init__(**kwargs)
        self.softmax_scale = softmax_scale

    def compute(self, embeddings, labels, ref_emb, ref_labels):
        if ref_emb is None and len(embeddings) <= 1:
            return embeddings.sum() * 0.0  # its value for one embedding: no pair
        return soft_nearest_neighbor_loss(
            embeddings,
            labels,
            1.0 / (2.0 * self.softmax_scale),
            keys=ref_emb,
            key_labels=ref_labels,
            eps=0.0,
            reduction="mean_over_positives",
        )


class SelfSupervisedLoss(torch.nn.Module):
    """pytorch-metric-learning's ``SelfSupervisedLoss``: ``ref_emb[i]`` a view
    of ``embeddings[i]``, labels made from the positions.  ``symmetric=True``
    (its default): both sets are anchors, each against the other and itself;
    ``False``: the embeddings are the anchors and ``ref_emb`` the keys."""

    def __init__(self, loss, symmetric=True, **kwargs):
        super().__init__()
        if not isinstance(loss, (NTXentLoss, SupConLoss, NCALoss)):
            raise ValueError(
                f"SelfSupervisedLoss here wraps snnl.losses' NTXentLoss, SupConLoss or NCALoss, got "
                f"{type(loss).__name__}; wrap pytorch-metric-learning's own losses with its own wrapper"
            )
        if kwargs:
            raise TypeError(f"SelfSupervisedLoss got unexpected keyword arguments {sorted(kwargs)}")
        self.loss = loss
        self.symmetric = symmetric

    def forward(self, embeddings, ref_emb):
        if not isinstance(ref_emb, torch.Tensor) or ref_emb.shape != embeddings.shape:
            raise ValueError("ref_emb must have the embeddings' shape: ref_emb[i] is a view of embeddings[i]")
        if isinstance(self.loss, NTXentLoss):
            # one positive per row, known from the form: the backends' two-view SNNL (the same
            # terms and mean; symmetric, the rows in another order)
            views = torch.stack([embeddings, ref_emb], 1) if self.symmetric else embeddings
            return ntxent_loss(views, temperature=self.loss.temperature, keys=None if self.symmetric else ref_emb)
        labels = torch.arange(embeddings.shape[0], device=embeddings.device)
        if self.symmetric:
            return self.loss(torch.cat([embeddings, ref_emb]), torch.cat([labels, labels]))
        return self.loss(embeddings, labels, ref_emb=ref_emb, ref_labels=labels)
