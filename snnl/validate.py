"""The checks of every option outside the loss, one rule each (as scikit-learn's
parameter constraints): integers are integers (``3.0`` is refused, numpy
integers are not), choices are among their list, messages name the option.
Imports nothing heavy: configurations check their fields with these at once.
"""

from __future__ import annotations

import numbers
from typing import Literal, overload


@overload
def integer(name: str, value, minimum: int = 1, *, allow_none: Literal[False] = False) -> int: ...
@overload
def integer(name: str, value, minimum: int = 1, *, allow_none: bool) -> int | None: ...
def integer(name: str, value, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def choice(name: str, value, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def seeds(values) -> tuple[int, ...]:
    """Seeds: at least one, each an integer in [0, 2**32) (what numpy and
    scikit-learn accept), no repeats (a repeated seed would count twice in
    the mean and standard deviation)."""
    values = tuple(values)
    if not values:
        raise ValueError("at least one seed is needed")
    for seed in values:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**32:
            raise ValueError(f"seeds must be integers in [0, 2**32), got {seed!r}")
    repeated = sorted({s for s in values if values.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must not repeat; {', '.join(map(str, repeated))} appear more than once")
    return tuple(int(s) for s in values)


def device(value) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (any device torch knows, checked
    against what this machine has before any work starts)."""
    import torch

    if value == "auto":
        return value
    try:
        parsed = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {value!r} was asked for, but torch sees no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return str(value)
