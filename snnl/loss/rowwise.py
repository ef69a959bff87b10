"""Per-row algebra shared by every backend.

Every backend reduces a batch to two numbers per row i, both in the log domain:

    lse_all[i]  = log S_i = logsumexp_{j != i} s_ij
    lse_same[i] = log N_i = logsumexp_{j != i, y_j = y_i} s_ij   (-inf: no same-class neighbour)

with logits s_ij = -d_ij / T.  The per-row loss is the authors' convention

    l_i = -log(eps + N_i / (eps + S_i)),

written here with ``logaddexp`` so that nothing overflows or underflows however
small T is or however far apart the points are.  With ``eps == 0`` it is
``lse_all - lse_same`` and is ``+inf`` for rows without a same-class neighbour.

The fused backends do not differentiate through these formulas with autograd:
they need the two partial derivatives dl_i/d lse_all[i] and dl_i/d lse_same[i]
in closed form (``row_coefficients``), which the tests check against autograd.
"""

from __future__ import annotations

import math

import torch

from ..kernels import accumulation_dtype

# what the loss computes and returns in: fp64 for fp64, else fp32 (the one rule, shared with the kernels)
compute_dtype = accumulation_dtype

# A row whose sum of exp(s) at the shared shift 0 is below exp(-FAR) may have
# lost precision to underflow, and is computed again at its own scale (the
# fast backends' exact passes).  fp32: exp() is subnormal below exp(-87) (the
# CPU path drops such terms: they are slow to compute); with the row's sum at
# least exp(-50), all its terms below exp(-87) together (at most 2^17 of them)
# are under exp(-75), far below one rounding error of the sum.
FAR = {torch.float32: 50.0, torch.float64: 600.0}


def euclidean_centre(queries: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
    """The point every backend subtracts from queries and keys before the
    squared Euclidean distance: the coordinate-wise median of all of them, in
    the compute dtype.  The distance does not change; its expansion
    |x|^2 + |y|^2 - 2 <x, y> then loses nothing to an offset the points share
    (codes 100 away from the origin with a spread of 0.1 lost 13% of the loss
    to cancellation in fp32 without it).  The median rather than the mean: a
    single far point moves the mean away from all the others, and their
    distances would cancel again.  A constant of the computation: no
    gradient flows through it (none would: the distance does not depend on it)."""
    points = queries.detach() if keys is None else torch.cat([queries.detach(), keys.detach()])
    centre = points.median(dim=0).values
    return centre if centre.dtype == compute_dtype(queries.dtype) else centre.to(compute_dtype(queries.dtype))


def rows_loss(lse_all: torch.Tensor, lse_same: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-row loss from the two per-row log-sum-exps (differentiable, to any
    order).  Rows without a same-class neighbour are selected, not computed:
    with eps > 0 their loss is the constant -log(eps), with eps == 0 it is
    +inf; the formula sees a finite stand-in for their -inf, so that no
    derivative of theirs (second order included: logaddexp's at -inf is NaN)
    is inf * 0 = NaN.  A NaN (an overflow) stays in and makes the row NaN."""
    has_same = lse_same != -math.inf
    safe_same = torch.where(has_same, lse_same, 0.0)
    if eps == 0.0:
        return torch.where(has_same, lse_all - safe_same, math.inf)
    log_eps = torch.full_like(lse_all, math.log(eps))
    log_ratio = safe_same - torch.logaddexp(log_eps, lse_all)  # log(N / (eps + S))
    return torch.where(has_same, -torch.logaddexp(log_eps, log_ratio), -math.log(eps))


def row_coefficients(
    lse_all: torch.Tensor, lse_same: torch.Tensor, eps: float, grad_rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream gradient times dl_i/d lse_all[i] and dl_i/d lse_same[i].

    Rows without a same-class neighbour get zero for both: with eps > 0 their
    loss is the constant -log(eps); with eps == 0 they are left out.
    """
    has_same = lse_same != -math.inf
    zeros = torch.zeros_like(lse_all)
    if eps == 0.0:
        return torch.where(has_same, grad_rows, zeros), torch.where(has_same, -grad_rows, zeros)
    log_eps = math.log(eps)
    log_ratio = lse_same - torch.logaddexp(torch.full_like(lse_all, log_eps), lse_all)
    # p = r / (eps + r) with r = N / (eps + S): the share of the outer log's argument
    # that is not eps.  q = S / (eps + S) likewise for the inner one.
    p = torch.where(has_same, torch.sigmoid(log_ratio - log_eps), zeros)
    q = torch.sigmoid(lse_all - log_eps)
    return grad_rows * p * q, -grad_rows * p


def log_sum_gradients(upstream, lse_all: torch.Tensor, lse_same: torch.Tensor, eps: float):
    """(g_all, g_same) = dL/d lse_all and dL/d lse_same per row from the
    gradients arriving at a forward operator's outputs (``options.Upstream``):
    through the per-row loss (``row_coefficients``), plus those given for the
    log-sum-exps themselves; 0 for lse_same where it is the constant -inf."""
    g_all, g_same = row_coefficients(lse_all, lse_same, eps, upstream.rows)
    if upstream.lse_all is not None:
        g_all = g_all + upstream.lse_all
    if upstream.lse_same is not None:
        g_same = g_same + torch.where(lse_same != -math.inf, upstream.lse_same, 0.0)
    return g_all, g_same
