"""``SNNLoss``: the module form of ``soft_nearest_neighbor_loss``."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import validation
from .functional import soft_nearest_neighbor_loss


class SNNLoss(nn.Module):
    """Soft nearest neighbor loss as a module, with the functional's options.

    ``learn_temperature=True`` makes T a parameter (Frosst et al. learn it).  It
    is stored as log T so that gradient steps keep it positive; read it with
    ``.temperature``.  A temperature passed to ``forward`` (e.g. from an
    annealing schedule) overrides the stored one for that call.  ``forward``
    takes the per-call arguments (``keys``, ``key_labels``, ``weight``); the
    rest are fixed here.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        learn_temperature: bool = False,
        distance: str = "cosine",
        eps: float = 1e-5,
        reduction: str = "mean",
        ignore_index: int | None = None,
        backend: str = "auto",
        precision: str = "tf32x3",
        check_values: bool = True,
    ):
        super().__init__()
        self.eps = validation.check_options(distance, eps, reduction, backend, precision, ignore_index)
        validation.check_temperature(temperature, torch.device("cpu"), torch.float64)
        self.distance, self.reduction, self.backend, self.precision = distance, reduction, backend, precision
        self.ignore_index, self.check_values = ignore_index, check_values
        log_t = torch.tensor(math.log(float(temperature)))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        temperature=None,
        *,
        keys=None,
        key_labels=None,
        weight=None,
    ) -> torch.Tensor:
        return soft_nearest_neighbor_loss(
            z,
            labels,
            self.temperature if temperature is None else temperature,
            keys=keys,
            key_labels=key_labels,
            distance=self.distance,
            eps=self.eps,
            reduction=self.reduction,
            weight=weight,
            ignore_index=self.ignore_index,
            backend=self.backend,
            precision=self.precision,
            check_values=self.check_values,
        )

    def extra_repr(self) -> str:
        learned = isinstance(self.log_temperature, nn.Parameter)
        return (
            f"temperature={float(self.temperature.detach()):.4g}, learn_temperature={learned}, "
            f"distance={self.distance!r}, eps={self.eps}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index!r}, backend={self.backend!r}, precision={self.precision!r}"
        )
