"""What every backend receives: the batch (``Inputs``) and the loss's options
(``LossOptions``), each one frozen record.

The public function builds them once; the operators (``snnl.loss.ops``)
flatten them into the typed ``torch.library`` schema and rebuild them on the
other side with ``schema`` / ``flatten`` / ``rebuild`` below, so that a new
option is a field here, the reference formula and each backend's math:
nothing else counts positions.
"""

from __future__ import annotations

import typing
from typing import NamedTuple

from torch import Tensor

# LossOptions.self_offset when the keys are not the queries: no pair is left out
NO_SELF_PAIR = -1


class Inputs(NamedTuple):
    """The tensors of one call: 2-D queries, the keys (None: the queries
    themselves, the square case), one integer label each, and the
    temperature as a 0-dim tensor of the compute dtype."""

    queries: Tensor
    keys: Tensor | None
    query_labels: Tensor
    key_labels: Tensor | None
    temperature: Tensor

    @property
    def square(self) -> bool:
        return self.keys is None

    def key_side(self) -> tuple[Tensor, Tensor]:
        """(keys, key_labels): the queries' own in the square case."""
        if self.keys is None or self.key_labels is None:
            return self.queries, self.query_labels
        return self.keys, self.key_labels


class Upstream(NamedTuple):
    """The gradients arriving at a forward operator's outputs: the per-row
    losses' and, where they were used (an operator called directly), the two
    per-row log-sum-exps' (None: not used)."""

    rows: Tensor
    lse_all: Tensor | None
    lse_same: Tensor | None


class LossOptions(NamedTuple):
    """The loss's options below the public function's checks."""

    # query i is key self_offset + i, and that pair is left out (NO_SELF_PAIR: the
    # keys are not the queries); 0 in the square case
    self_offset: int
    distance: str  # snnl.choices.DISTANCES
    eps: float  # the authors' stability constant; 0: logsumexp_all - logsumexp_same
    precision: str  # the fused kernels' fp32 products (snnl.choices.PRECISIONS)

    @property
    def euclidean(self) -> bool:
        return self.distance == "euclidean"


_SCHEMA_TYPES = {Tensor: "Tensor", Tensor | None: "Tensor?", int: "int", str: "str", float: "float", bool: "bool"}


def schema(record: type[NamedTuple], prefix: str = "") -> str:
    """The fields of ``record`` as a ``torch.library`` schema's arguments,
    e.g. ``"int self_offset, str distance, float eps, str precision"``
    (``prefix`` before each name)."""
    hints = typing.get_type_hints(record)
    return ", ".join(f"{_SCHEMA_TYPES[hints[name]]} {prefix}{name}" for name in record._fields)


def flatten(*records: NamedTuple) -> tuple:
    """The records' fields one after the other, as an operator takes them."""
    return tuple(value for record in records for value in record)


def rebuild(args, *records: type[NamedTuple]) -> tuple:
    """The inverse of ``flatten``: one record per type of ``records``, built
    from the leading fields of ``args``, then the rest of ``args``."""
    built = []
    for record in records:
        count = len(record._fields)
        built.append(record._make(args[:count]))
        args = args[count:]
    return (*built, *args)
