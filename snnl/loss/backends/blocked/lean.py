"""The CPU path for a batch that fits one tile, in eager code: a few dense
torch operations and autograd.

When the queries and the keys each fit one block (``tiles.BLOCK_ROWS``), the
tiled pass is a single tile, and what costs is what surrounds it: the
operator's dispatch and autograd layers, the label codes, the far-row
passes.  Here the whole problem is one matrix of logits and two
``torch.logsumexp`` per row (each with its own maximum, so no row is ever
"far"), written with as few operations as the formula allows, and autograd
differentiates it (to any order: it is plain torch, like the reference).
The points are prepared as on every backend (unit rows at any norm, or
centred on their median), so the numbers are the tiled path's to rounding.
Compiled code, fake tensors and torch.func keep the operator (``blocked``'s
one opaque node), where this saving does not apply.
"""

from __future__ import annotations

import math

import torch

from ...options import Inputs, LossOptions
from ...rowwise import euclidean_centre
from . import tiles


def eager_cpu(inputs: Inputs) -> bool:
    """Whether the call runs eagerly on real CPU tensors (not compiled, not
    fake, not under a torch.func transform), where plain torch code may
    stand in for the operator."""
    queries = inputs.queries
    if queries.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not (
        torch._C._functorch.is_functorch_wrapped_tensor(queries) or isinstance(queries, torch._subclasses.FakeTensor)
    )


def fits(inputs: Inputs) -> bool:
    """Whether this path takes the call: eager, CPU, queries and keys each in one block."""
    keys, _ = inputs.key_side()
    return eager_cpu(inputs) and max(inputs.queries.shape[0], keys.shape[0]) <= tiles.BLOCK_ROWS


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``reference.unit_rows`` in fewer operations: a row of zeros stays zeros
    and passes no gradient (the mask), any other row is normalised after
    dividing by its largest entry (constant: the result does not depend on it)."""
    largest = x.detach().abs().amax(dim=1, keepdim=True)
    nonzero = largest != 0  # (a NaN row stays NaN)
    scaled = x / largest.masked_fill_(~nonzero, 1.0)
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True).masked_fill(~nonzero, 1.0)
    return scaled.div(norm).mul_(nonzero)


def _logits(inputs: Inputs, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(the logits, -inf for the pairs left out, the same-class pairs, whether any pair is left out)."""
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    square = inputs.square
    if options.euclidean:
        centre = euclidean_centre(queries, inputs.keys)
        q = queries - centre
        k = q if square else keys - centre
        q_sq = q.square().sum(1, keepdim=True)
        k_sq = q_sq if square else k.square().sum(1, keepdim=True)
        distance = torch.addmm(q_sq + k_sq.T, q, k.T, alpha=-2.0).clamp_min_(0.0)
        logits = distance / -temperature if temperature.requires_grad else distance.div_(-temperature)
    else:
        q = _unit_rows(queries)
        k = q if square else _unit_rows(keys)
        if temperature.requires_grad:
            logits = (q @ k.T - 1.0) / temperature
        else:  # in place: the product's backward does not read its output (and T is not read on the host)
            logits = (q @ k.T).sub_(1.0).div_(temperature)
    same = query_labels[:, None] == key_labels[None, :]
    self_pairs = square or options.self_offset >= 0
    if self_pairs:  # query i is key offset + i: that pair is left out (in place: no backward reads the logits)
        offset = 0 if square else options.self_offset
        logits.diagonal(offset).fill_(-math.inf)
        same.diagonal(offset).fill_(False)
    return logits, same, self_pairs


def statistics(inputs: Inputs, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lse_all, lse_same, has_same) per query, as ``reference.statistics``."""
    logits, same, self_pairs = _logits(inputs, options)
    has_same = same.any(dim=1)
    lse_all = torch.logsumexp(logits, dim=1)
    # a row with no key of its class: dummy finite logits (logsumexp of all -inf has a NaN gradient)
    lse_same = torch.logsumexp(logits.masked_fill(~same, -math.inf).masked_fill_(~has_same[:, None], 0.0), dim=1)
    lse_same = torch.where(has_same, lse_same, -math.inf)
    # -inf although there are keys (of the row's class): every such logit overflowed: NaN
    if logits.shape[1] > int(self_pairs):  # every row has keys besides itself
        lse_all = torch.where(lse_all == -math.inf, math.nan, lse_all)
    lse_same = torch.where(has_same & (lse_same == -math.inf), math.nan, lse_same)
    return lse_all, lse_same, has_same


def supcon_rows(inputs: Inputs, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """(SupCon's L_out per query, the number of its positives): lse_all less
    the mean of the positives' logits, from one matrix of logits (0 where
    there is no positive), as ``snnl.loss.forms.supcon_loss`` computes it
    in O(b d) for the other paths."""
    logits, same, self_pairs = _logits(inputs, options)
    lse_all = torch.logsumexp(logits, dim=1)
    if logits.shape[1] > int(self_pairs):  # -inf although there are keys: every logit overflowed: NaN
        lse_all = torch.where(lse_all == -math.inf, math.nan, lse_all)
    positives = same.sum(dim=1)
    # the positives' logits summed (no -inf among them: the pairs left out are not positives)
    total = torch.where(same, logits, 0.0).sum(dim=1)
    mean = total / positives.clamp_min(1)
    return torch.where(positives > 0, lse_all - mean, lse_all), positives
