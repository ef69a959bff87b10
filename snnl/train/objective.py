"""The training objective: reconstruction + alpha * SNNL over the hidden layers, per batch.

    BCE(reconstruction, x) + alpha * combine_l SNNL(h_l, y, T(epoch))

(the mean squared error for a linear output, N2D's), the SNNL term on every
hidden layer or the code alone, combined by sum (Eq. 5) or minimum (Eq. 4);
label-free, each row's partners are its positives in the loss's multi-view
form (``snnl.train.positives``).  The loop (``snnl.train.loop``) calls it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed
from .config import TrainConfig


def batch_loss(
    model,
    xb,
    yb,
    temperature: float,
    config: TrainConfig,
    global_rows: int | None = None,
    partners: torch.Tensor | None = None,
    pseudo_labels: torch.Tensor | None = None,
):
    """(loss, reconstruction, per-layer SNNL list) for one batch.

    ``partners``: for label-free positives (``config.positives``), each
    row's ``config.partners`` partners (``snnl.train.positives.Partners``):
    encoded in the same forward pass as the batch (one pass:
    DistributedDataParallel expects one), their hidden layers grouped with
    their row's in the multi-view form of the loss, ``(b, 1 + partners, d)``.
    ``pseudo_labels``: the rows' labels in that form (SupCon's), from the
    codes' clusters (``snnl.train.pseudo_labels``); without them each row's
    partners are its only positives.

    Under torch.distributed every term is this process's share (its rows'
    sum over the global batch's count), so that the shares of all processes
    add up to the single-process values of the global batch of
    ``global_rows`` rows.  In a single process they are the batch means.
    """
    global_rows = len(xb) if global_rows is None else global_rows
    output, hidden = model(xb if partners is None else torch.cat([xb, partners]))
    if partners is not None:
        output = output[: len(xb)]
        hidden, partner_hidden = [h[: len(xb)] for h in hidden], [h[len(xb) :] for h in hidden]
    if config.reconstruction_loss == "bce":
        total = F.binary_cross_entropy_with_logits(output.float(), xb.float(), reduction="sum")
    else:
        total = F.mse_loss(output.float(), xb.float(), reduction="sum")
    reconstruction = total / (global_rows * xb.shape[1])
    if not config.snnl or global_rows < 2:
        return reconstruction, reconstruction, []
    layers = range(len(hidden)) if config.layers == "all" else [model_code_index(model)]
    if partners is None:
        labels = yb if config.supervised else torch.zeros_like(yb)
        points = [hidden[i] for i in layers]
    else:  # each row and its partners are one sample's views, positives of each other (and of its cluster)
        labels = pseudo_labels
        points = [torch.cat([hidden[i][:, None], _by_anchor(partner_hidden[i], len(xb))], 1) for i in layers]
    per_layer = [
        distributed.global_loss_share(
            h, labels, temperature, distance=config.distance, eps=config.eps, backend=config.loss_backend
        )
        for h in points
    ]
    if config.combine == "sum":
        snnl = torch.stack(per_layer).sum()
    else:  # every process must pick the same layer: the minimum of the global values
        global_values = distributed.all_reduce_tensor(torch.stack([v.detach() for v in per_layer]))
        snnl = per_layer[int(torch.argmin(global_values))]
    return reconstruction + config.alpha * snnl, reconstruction, per_layer


def _by_anchor(partner_rows: torch.Tensor, anchors: int) -> torch.Tensor:
    """(anchors, partners per anchor, width) from the partners' rows, which come
    every anchor's first partner first, then every anchor's second, ...
    (``snnl.train.positives.Partners``)."""
    return partner_rows.reshape(-1, anchors, partner_rows.shape[1]).transpose(0, 1)


def model_code_index(network) -> int:
    """The code's position among the hidden layers (through a DistributedDataParallel wrapper too)."""
    return getattr(network, "module", network).code_index
