"""What the kernels take: each side of the pairs as one record, and how its
logits are computed as one compile-time record.

``Side`` is a runtime argument (Triton passes a NamedTuple of tensors and
integers as one parameter and specialises each field), so that a kernel
names ``Q.ops`` and ``K.labels`` instead of ten loose pointers and strides.
``Math`` is a ``tl.constexpr`` record: every choice that changes the
compiled code of a tile of logits, in one place.  (Triton 3.6, torch 2.11's,
needs a record field that sizes a tensor bound to a local ``tl.constexpr``
first; tile sizes therefore stay separate ``BLOCK_*`` constexprs.)

The operand layout: ``ops`` is (n, planes, width), contiguous: the points
as the pair kernels read them (unit rows for the cosine distance, centred
points for the Euclidean one), padded with zero features to ``width`` (a
whole number of feature chunks), in ``planes`` = 2 parts (hi, lo) for
3xTF32, else 1.  A row's lo part is ``width`` elements after its hi part.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton.language as tl

from . import accumulation_dtype


class Side(NamedTuple):
    """One side of the pairs (the queries or the keys), as a kernel argument."""

    ops: torch.Tensor  # (n, planes, width): see the module docstring
    sq: torch.Tensor  # (n,) squared norms of the centred points (Euclidean); a stand-in, unread, for the cosine
    labels: torch.Tensor  # (n,) class ids, any integer dtype
    n: int
    width: int  # features per plane (padded)


class Math(NamedTuple):
    """How a tile's logits (and the backward product H @ x) are computed: a
    ``tl.constexpr`` record."""

    EUCLIDEAN: bool  # squared Euclidean distance of centred points; else cosine of unit rows
    THREE_TF32: bool  # fp32 operands split (hi, lo) in memory: three TF32 products per dot
    PRECISION: str  # one product's input_precision otherwise: "tf32" or "ieee"
    GRAD_THREE_TF32: bool  # the backward product H @ x in 3xTF32 (H split in registers)
    ACC: object  # the accumulators' tl dtype: tl.float64 for fp64 inputs, else tl.float32
    WHOLE_D: bool  # the features fit one chunk: tiles loaded once, before the loop over key tiles


def math_for(dtype: torch.dtype, precision: str, euclidean: bool, whole_d: bool) -> Math:
    """The ``Math`` of operands of ``dtype`` at ``precision`` (snnl.choices.PRECISIONS)."""
    fp32, half = dtype == torch.float32, dtype in (torch.float16, torch.bfloat16)
    three = fp32 and precision == "tf32x3"
    return Math(
        EUCLIDEAN=euclidean,
        THREE_TF32=three,
        PRECISION="ieee" if dtype == torch.float64 or (fp32 and precision == "ieee") else "tf32",
        GRAD_THREE_TF32=three or (half and precision != "ieee"),
        ACC=tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32,
        WHOLE_D=whole_d,
    )


def planes(dtype: torch.dtype, precision: str) -> int:
    """Planes of the operands: 2 (hi, lo) for fp32 with 3xTF32, else 1."""
    return 2 if dtype == torch.float32 and precision == "tf32x3" else 1


class Coefficients(NamedTuple):
    """One side's per-row inputs of the backward pass (``rows.coefficients``):
    a = g_all / S and c = g_same / N for the shared-exp terms, and the far
    rows' exact terms, (4, n)."""

    a: torch.Tensor
    c: torch.Tensor
    exact: torch.Tensor


class Parts(NamedTuple):
    """A pair launch's partial sums per part of the key range, added by the
    finishing kernels in a fixed order: forward (parts, 2, n) sums (all,
    same class); backward grad (parts, n, width), hsum and weighted (parts, n)."""

    grad: torch.Tensor
    hsum: torch.Tensor
    weighted: torch.Tensor


class Terms(NamedTuple):
    """Which terms of a pair's derivative a backward launch adds up: a
    ``tl.constexpr`` record."""

    OWN: bool  # the row's own term, w_ij (a_i + [same] c_i): the rows' side
    THEIR: bool  # the column's term (the logits are symmetric): the keys' side
    WEIGHTED: bool  # also sum_j own_ij s_ij (the temperature's gradient)
    FAR_PASS: bool  # the far rows' exact terms instead of the shared-exp ones
