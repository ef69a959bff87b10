"""The per-row losses of a square batch that fits one tile, with a
hand-written backward pass: what the training step calls most.

At training-sized batches (b = 64 ... 512) the loss costs about what its
products cost, and autograd's differentiation of the formula spends three
(b x b x d) products and a dozen passes over the b x b logits.  Here:

- forward: one product u u^T, one exponential per pair at a shift (0 for
  cosine logits, which are at most 0; else each row's largest logit), the
  row sums of E and of its same-class part, and one read of a flag on the
  host (CPU tensors: no device to wait for) that every row's sums are at
  least exp(-FAR), where the terms lost to underflow are below its rounding
  (``rowwise.FAR``);
- backward: H = E (a_i + [y_i = y_j] c_i) (the pair's derivative, a and c
  the row loss's derivatives in the two sums), and one product (H + H^T) u: the
  square case's symmetry serves the rows' and the columns' terms at once.

Where that read finds a row this arithmetic cannot serve exactly (a
same-class sum below exp(-FAR), norms where squaring over- or underflows, a
zero row, a non-finite value), the call returns None and ``lean.statistics``
takes it (each log-sum-exp at its own maximum, differentiated by autograd):
the numbers are the same to rounding, as on every backend.  Second-order
gradients (``create_graph=True``) differentiate that formula too (an
``autograd.grad`` inside the backward pass: torch leaves a reference cycle
there that the garbage collector frees, a first-order step leaves none).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ...options import Inputs, LossOptions
from ...rowwise import FAR, euclidean_centre, rows_loss
from . import lean, tiles

# Wide points: at 1,024 rows the tiles cost about three (b x b x d) products
# and this path two, with more passes over b x b, so it is faster from about
# 1,000 features (EPYC, 1 thread, busy: 1,024 x 1,000: 124 ms against 160;
# 1,024 x 750: 117 against 112; 1,024 x 2,000: 234 against 291)
WIDE_ROWS = 1024
WIDE_FEATURES = 1000

# row norms whose squares and their sums neither over- nor underflow in fp32:
# above it |z|^2 nears fp32's 3.4e38; below it terms of |z|^2 are subnormal
NORM_RANGE = (1e-15, 1e18)


def fits(inputs: Inputs) -> bool:
    """The calls this path takes: eager, CPU, square (the batch against
    itself), one tile of rows (``tiles.BLOCK_ROWS``) or up to ``WIDE_ROWS``
    of at least ``WIDE_FEATURES`` features."""
    if not (inputs.square and lean.eager_cpu(inputs)):
        return False
    rows, features = inputs.queries.shape
    return rows <= tiles.BLOCK_ROWS or (rows <= WIDE_ROWS and features >= WIDE_FEATURES)


@dataclass
class _Pairs:
    """What the backward pass reads: E = exp(s - shift) per pair (0 on the
    diagonal), the same-class pairs, the points as used (unit rows, or
    centred points), the row norms (cosine), and per row what the form's
    derivative in the pair logits needs (``_pair_derivatives``)."""

    form: str  # "snnl" (L_in) or "supcon" (L_out)
    weights: torch.Tensor
    same: torch.Tensor
    points: torch.Tensor
    norms: torch.Tensor | None
    # snnl: l = -log(eps + r) with r = N / (eps e^-shift + S), 1 / (eps e^-shift + S), whether N has terms;
    # supcon: l = log S + shift - (sum of the positives' logits) / n, 1 / S, n
    rows: torch.Tensor | None  # (handed to the output, then dropped)
    ratio: torch.Tensor | None
    inverse_total: torch.Tensor
    has_same: torch.Tensor
    positives: torch.Tensor | None


@functools.cache
def _constant(values: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A small constant CPU tensor, made once (not a copy from the host per call)."""
    return torch.tensor(values, dtype=dtype)


def _logits(x: torch.Tensor, temperature, options: LossOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the logits of the points as used, a fresh b x b tensor; for the
    Euclidean distance also each point's squared norm)."""
    if not options.euclidean:
        return (x @ x.T).sub_(1.0).div_(temperature), None
    squares = x.square().sum(1)
    distances = torch.addmm(squares[:, None] + squares[None, :], x, x.T, alpha=-2.0)
    return distances.clamp_min_(0.0).div_(-temperature), squares


@torch.no_grad()
def _pairs(inputs: Inputs, options: LossOptions, form: str = "snnl") -> _Pairs | None:
    """What the loss and its backward pass read, or None where the call
    goes to the formula (``lean``)."""
    queries, labels, temperature, eps = inputs.queries, inputs.query_labels, inputs.temperature, options.eps
    far = FAR[queries.dtype]
    if options.euclidean:
        norms = None
        points = queries - euclidean_centre(queries, None)
        logits, squares = _logits(points, temperature, options)
        assert squares is not None
        # at least the bounds below: a finite sum of squares (finite points)
        checked, bounds = [-squares.sum()], [-torch.finfo(squares.dtype).max]
    else:
        norms = torch.linalg.vector_norm(queries, dim=1)
        smallest, largest = torch.aminmax(norms)
        checked, bounds = [smallest, -largest], [NORM_RANGE[0], -NORM_RANGE[1]]
        points = queries / norms[:, None]
        logits, _ = _logits(points, temperature, options)
    same = labels[:, None] == labels
    same.diagonal().fill_(False)
    positive_logits = torch.where(same, logits, 0.0).sum(1) if form == "supcon" else None
    logits.diagonal().fill_(-math.inf)
    # cosine logits are at most 0: the shift 0 (no pass for a maximum); a row
    # whose sum then falls below exp(-FAR) goes to the formula (below).
    # Euclidean logits have no bound: each row's largest
    shift = logits.amax(dim=1) if options.euclidean else None
    weights = (logits if shift is None else logits.sub_(shift[:, None])).exp_()
    total = weights.sum(1)
    has_same = same.any(dim=1)
    if form == "supcon":  # its positives' logits are read as they are: only the total must be in range
        same_total = None
        checked.append(total.amin())
    else:
        same_total = (weights * same).sum(1)
        # each row's sum that must be at least exp(-FAR): its same-class one (at most its total), or its total
        checked.append(torch.where(has_same, same_total, total).amin())
    bounds.append(math.exp(-far))
    # one read (a NaN fails every comparison)
    if not bool((torch.stack(checked) >= _constant(tuple(bounds), total.dtype)).all()):
        return None
    if positive_logits is not None:  # supcon
        positives = same.sum(1)
        lse_all = total.log() if shift is None else total.log().add_(shift)
        rows = lse_all - positive_logits / positives.clamp_min(1)  # a row without a positive: lse_all
        return _Pairs(form, weights, same, points, norms, rows, None, total.reciprocal(), has_same, positives)
    # eps in the shifted sums' units (the loss does not depend on the shift); inf
    # where eps outweighs every term by far: the row's loss is -log(eps) then
    scaled_eps = eps if shift is None else (torch.exp(-shift).mul_(eps) if eps else 0.0)
    assert same_total is not None
    denominator = total + scaled_eps
    ratio = same_total / denominator  # divided, not times a reciprocal: N = S gives 1 exactly (a loss of 0)
    rows = (ratio + eps).log_().neg_()  # eps = 0: +inf for a row without a same-class key
    return _Pairs(form, weights, same, points, norms, rows, ratio, denominator.reciprocal_(), has_same, None)


def _pair_derivatives(pairs: _Pairs, grad_rows: torch.Tensor, eps: float) -> torch.Tensor:
    """H_ij = dL/ds_ij, 0 on the diagonal."""
    if pairs.form == "supcon":
        # l = log S - mean_P s: dl/ds_ij = E_ij / S_i - [same] / n_i
        assert pairs.positives is not None
        a = grad_rows * pairs.inverse_total
        c = torch.where(pairs.positives > 0, grad_rows / pairs.positives.clamp_min(1), 0.0)
        return (pairs.same * c[:, None]).neg_().addcmul_(pairs.weights, a[:, None])
    # l = -log(eps + N / (e + S)): dl/dS = r / ((eps + r)(e + S)), dl/dN = -1 / ((eps + r)(e + S)),
    # and dS/ds_ij = E_ij, dN/ds_ij = [same] E_ij
    assert pairs.ratio is not None
    c = (pairs.ratio + eps).reciprocal_().mul_(grad_rows).mul_(pairs.inverse_total)
    if eps == 0.0:  # rows without a same-class key are left out: no derivative (not 1 / 0)
        c.masked_fill_(~pairs.has_same, 0.0)
    # H = E (a_i - [same] c_i), a = r c: a - c is 0 exactly where N = S (one class)
    return (pairs.same * c[:, None]).neg_().add_((c * pairs.ratio)[:, None]).mul_(pairs.weights)


class _LeanRows(torch.autograd.Function):
    """Per-row losses from ``_Pairs`` (computed before, without autograd),
    differentiable in the queries and the temperature."""

    @staticmethod
    def forward(ctx, queries, temperature, pairs: _Pairs, labels, options: LossOptions):
        ctx.save_for_backward(queries, temperature, labels)
        ctx.pairs, ctx.options = pairs, options
        rows, pairs.rows = pairs.rows, None  # (an output kept by its own node would be a reference cycle)
        assert rows is not None
        return rows

    @staticmethod
    def backward(ctx, grad_rows):
        queries, temperature, labels = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that is differentiable again
            return (*_formula_gradients(ctx, queries, temperature, labels, grad_rows), None, None, None)
        pairs, options = ctx.pairs, ctx.options
        h = _pair_derivatives(pairs, grad_rows, options.eps)
        both = h + h.T  # s_ij = s_ji: the row's and the column's term
        x = pairs.points
        grad_x = both @ x
        if options.euclidean:  # s_ij = -|x_i - x_j|^2 / T: ds/dx_i = -2 (x_i - x_j) / T
            grad_q = grad_x.addcmul_(x, both.sum(1)[:, None], value=-1.0).mul_(2.0 / temperature)
        else:  # s_ij = (<u_i, u_j> - 1) / T with u = z / |z|: the Jacobian (I - u u^T) / |z|
            grad_x.div_(temperature)
            radial = (x * grad_x).sum(1, keepdim=True)
            assert pairs.norms is not None
            grad_q = grad_x.addcmul_(x, radial, value=-1.0).div_(pairs.norms[:, None])
        grad_t = None
        if ctx.needs_input_grad[1]:  # ds/dT = -s / T, s recomputed (the weights are shifted)
            logits, _ = _logits(x, temperature, options)
            grad_t = -(h * logits.fill_diagonal_(0.0)).sum() / temperature  # (H is 0 there)
        return grad_q, grad_t, None, None, None


def _formula_gradients(ctx, queries, temperature, labels, grad_rows):
    """The gradients through the formula (``lean``; autograd, differentiable again)."""
    inputs = Inputs(queries, None, labels, None, temperature)
    if ctx.pairs.form == "supcon":
        rows, _ = lean.supcon_rows(inputs, ctx.options)
    else:
        lse_all, lse_same, _ = lean.statistics(inputs, ctx.options)
        rows = rows_loss(lse_all, lse_same, ctx.options.eps)
    wanted = [x for x, needed in zip((queries, temperature), ctx.needs_input_grad[:2]) if needed]
    grads = iter(torch.autograd.grad(rows, wanted, grad_rows, create_graph=True))
    return tuple(next(grads) if needed else None for needed in ctx.needs_input_grad[:2])


def rows(inputs: Inputs, options: LossOptions):
    """(per-row losses, whether each row has a same-class key) through the
    hand-written backward pass, or None where the formula must take the
    call (see the module docstring)."""
    pairs = _pairs(inputs, options)
    if pairs is None:
        return None
    has_same = pairs.has_same
    return _LeanRows.apply(inputs.queries, inputs.temperature, pairs, inputs.query_labels, options), has_same


def supcon_rows(inputs: Inputs, options: LossOptions):
    """(SupCon's L_out per row, the number of each row's positives) through
    the hand-written backward pass, or None where ``lean.supcon_rows`` must
    take the call (a row without a positive: its lse_all, as there)."""
    pairs = _pairs(inputs, options, "supcon")
    if pairs is None:
        return None
    positives = pairs.positives
    return _LeanRows.apply(inputs.queries, inputs.temperature, pairs, inputs.query_labels, options), positives
