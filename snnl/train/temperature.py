"""Temperature schedules: callables mapping a 0-based epoch to T."""

from __future__ import annotations

import math
from dataclasses import dataclass


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _epoch(epoch) -> int:
    if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
    return int(epoch)


@dataclass(frozen=True)
class FixedTemperature:
    """T(epoch) = value."""

    value: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "value", _positive("value", self.value))

    def __call__(self, epoch: int) -> float:
        _epoch(epoch)
        return self.value


@dataclass(frozen=True)
class AnnealingTemperature:
    """T(epoch) = 1 / (eta + epoch) ** gamma, epoch counted from 0.

    The defaults (eta = 1, gamma = 0.55) are Agarap & Azcarraga's schedule:
    T = 1 at epoch 0, about 0.116 at epoch 49.
    """

    eta: float = 1.0
    gamma: float = 0.55

    def __post_init__(self):
        object.__setattr__(self, "eta", _positive("eta", self.eta))
        gamma = float(self.gamma)
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be finite, got {gamma}")
        object.__setattr__(self, "gamma", gamma)

    def __call__(self, epoch: int) -> float:
        return 1.0 / (self.eta + _epoch(epoch)) ** self.gamma
