"""The one list of the loss's backends.

The names are ``snnl.choices.LOSS_BACKENDS`` (a torch-free leaf, so that the
CLI lists them without importing torch); each is a module of
``snnl.loss.backends`` that describes itself (``Backend``).  Everything that
names backends reads this: validation, ``backend="auto"``, ``SNNLoss``, the
training configuration, the CLI (``snnl loss``, ``snnl backends``), the tests
and the benchmarks.  Adding a backend is a module in ``snnl.loss.backends``
(``forward``, ``backward`` and ``saved_like`` for an operator, see
``snnl.loss.ops``; ``rows`` for plain autograd, see ``reference``) and its
name in ``snnl.choices.LOSS_BACKENDS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from ..choices import LOSS_BACKENDS
from ..optional import triton_available


def _anywhere(z: torch.Tensor) -> None:
    return None


@dataclass(frozen=True)
class Backend:
    """A backend module and what it declares about itself: ``SUMMARY`` (what
    it is, for the README's table, ``snnl backends`` and errors), ``MEMORY``
    (extra memory of one call, in b and d), ``OPERATOR`` (registered as
    torch.library operators, ``snnl.loss.ops``: one opaque node for
    torch.compile, fake tensors and export; else plain autograd),
    ``CASTS_INPUTS`` (inputs cast to the compute dtype before the call; the
    fused kernels take half inputs as they are) and optionally
    ``check_usable(z)`` (raises, naming what to do instead, when it cannot
    take z here), ``eager_statistics(inputs, options)`` (a plain-torch
    path for the calls where it is faster than the operator, else None) and
    ``eager_rows(inputs, options)`` (likewise, the per-row losses with a
    backward pass of its own) and ``eager_form(form, inputs, options)``
    (likewise, a contrastive form of ``snnl.loss.forms``)."""

    module: ModuleType

    @property
    def name(self) -> str:
        return self.module.__name__.rsplit(".", 1)[-1]

    @property
    def summary(self) -> str:
        return self.module.SUMMARY

    @property
    def memory(self) -> str:
        return self.module.MEMORY

    @property
    def operator(self) -> bool:
        return self.module.OPERATOR

    @property
    def casts_inputs(self) -> bool:
        return self.module.CASTS_INPUTS

    def check_usable(self, z: torch.Tensor) -> None:
        getattr(self.module, "check_usable", _anywhere)(z)

    def eager_rows(self, inputs, options):
        """The backend's per-row losses and has-same flags in eager code with
        its own backward pass, where it has one for this call, else None."""
        path = getattr(self.module, "eager_rows", None)
        return None if path is None else path(inputs, options)

    def eager_form(self, form, inputs, options):
        """A contrastive form's per-query rows and positive counts in eager
        code where the backend has a faster path for this call, else None."""
        path = getattr(self.module, "eager_form", None)
        return None if path is None else path(form, inputs, options)

    def eager_statistics(self, inputs, options):
        """The backend's plain-torch statistics for this call where it has a
        faster path than its operator (``blocked``: one tile in eager code), else None."""
        path = getattr(self.module, "eager_statistics", None)
        return None if path is None else path(inputs, options)


# the backends in snnl.choices.LOSS_BACKENDS' order ("auto" picks one of them, ``resolve``)
BACKENDS: dict[str, Backend] = {
    name: Backend(importlib.import_module(f".backends.{name}", __package__)) for name in LOSS_BACKENDS[1:]
}
# what ``backend=`` accepts
CHOICES = LOSS_BACKENDS


def resolve(name: str, z: torch.Tensor) -> Backend:
    """``auto``: the fused kernels for CUDA tensors when Triton imports, else
    ``blocked`` (the fastest CPU path measured, bench/results/loss-cpu-*.json)."""
    if name == "auto":
        name = "triton" if z.device.type == "cuda" and triton_available() else "blocked"
    return BACKENDS[name]


def usable(z: torch.Tensor) -> list[str]:
    """The backends that can take ``z`` here."""
    names = []
    for name, backend in BACKENDS.items():
        try:
            backend.check_usable(z)
        except (ImportError, TypeError, RuntimeError):
            continue
        names.append(name)
    return names
