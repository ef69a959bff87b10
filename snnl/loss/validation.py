"""Argument checks for the public loss: at the top, naming the argument.

Two kinds:

- metadata checks (types, shapes, dtypes, devices, option values): always,
  and free: they read no tensor's values, so they hold inside compiled code
  and under fake tensors;
- value checks (NaN/Inf in the points, a tensor temperature <= 0, weights
  below 0, and logits -d/T that overflow the dtype, seen as NaN per-row
  losses from valid inputs): in eager calls on real tensors, one host read
  for all of them together, after the rows are computed (a device
  synchronisation on a GPU).  ``check_values=False`` skips them; they are
  skipped by themselves where values cannot be read without breaking what
  runs: under ``torch.compile`` (a graph break), during CUDA-graph capture,
  on fake or meta tensors and under ``torch.func`` transforms.  There a NaN
  in the points, or an overflow, gives a NaN loss: every backend propagates
  it (tests/test_loss_op.py, tests/test_loss_numerics.py).
"""

from __future__ import annotations

import math
import numbers

import torch

# reduction "mean_over_positives": the mean over the rows that have a same-class key
# (TF Similarity's and pytorch-metric-learning's convention); "mean" keeps the
# paper authors' (rows without one count -log(eps) when eps > 0)
from ..choices import DISTANCES, PRECISIONS, REDUCTIONS
from ..validate import choice as check_choice
from .registry import CHOICES as BACKEND_CHOICES


def check_options(distance, eps, reduction, backend, precision, ignore_index=None) -> float:
    check_choice("distance", distance, DISTANCES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKEND_CHOICES)
    check_choice("precision", precision, PRECISIONS)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an integer label or None, got {ignore_index!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_points(x, name: str) -> None:
    """A (n, d) or (n, views, d) floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be (batch, features) or (batch, views, features), got shape {tuple(x.shape)}")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")


def check_labels(labels, name: str, n: int, points: str, device) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name} must have an integer dtype (class ids), got {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match {points}'s {n} samples, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{points} is on {device} but {name} are on {labels.device}; put them on the same device")


def check_weight(weight, shape: tuple[int, ...], device) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point torch.Tensor, got {getattr(weight, 'dtype', type(weight))}")
    if tuple(weight.shape) not in (shape, shape[:1]):
        expected = f"{shape[:1]} (per sample) or {shape} (per view)" if len(shape) > 1 else f"{shape} (one per row)"
        raise ValueError(f"weight must have shape {expected}, got {tuple(weight.shape)}")
    if weight.device != device:
        raise ValueError(f"z is on {device} but weight is on {weight.device}; put them on the same device")


def check_temperature(temperature, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim tensor on ``device`` in ``dtype``; a tensor input keeps its
    autograd graph.  A number is checked here; a tensor's value is a value
    check (``check_values``)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1:
            raise ValueError(
                f"temperature must be a scalar (a 0-dim or shape-(1,) tensor), got shape {tuple(temperature.shape)}"
            )
        if not temperature.is_floating_point():
            raise TypeError(f"temperature tensor must be floating-point, got {temperature.dtype}")
        return temperature.reshape(()).to(device=device, dtype=dtype)
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        value = float(temperature)
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"temperature must be finite and > 0, got {value}")
        # filled on the device: no copy from the host, which would synchronise
        return torch.full((), value, device=device, dtype=dtype)
    raise TypeError(f"temperature must be a float or a scalar tensor, got {type(temperature).__name__}")


def values_readable(*tensors: torch.Tensor | None) -> bool:
    """Whether reading values breaks nothing here (see the module docstring)."""
    if torch.compiler.is_compiling():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    for x in tensors:
        if x is None:
            continue
        if x.device.type == "meta" or isinstance(x, torch._subclasses.FakeTensor):
            return False
        if torch._C._functorch.is_functorch_wrapped_tensor(x):
            return False
    return True


def check_values(
    points: dict[str, torch.Tensor],
    temperature: torch.Tensor | None,
    weight: torch.Tensor | None,
    rows: torch.Tensor | None = None,
    *,
    distance: str = "cosine",
    used_temperature: torch.Tensor | None = None,
) -> None:
    """NaN/Inf in the points, a temperature that is not finite and > 0, a
    weight that is not finite and >= 0, and a NaN among the per-row losses
    ``rows`` computed from valid inputs (every backend's sign that the
    logits -d/T overflowed the dtype): a ``ValueError`` naming the first
    problem.  One host read for all of them (one synchronisation on a GPU)."""

    def finite(x):  # x - x is 0 unless x is NaN or infinite: two kernels, where isfinite is four
        return (x - x) == 0

    flags = []
    for x in points.values():
        # detached: reading a number out of a tensor that requires grad makes torch warn;
        # the sum of a tensor holding a NaN or an Inf is not finite
        flags.append(finite(x.detach().sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)))
    if temperature is not None:
        t = temperature.detach().reshape(())
        flags.append(finite(t) & (t > 0))
    if weight is not None:
        w = weight.detach()
        flags.append(finite(w.sum()) & (w.min() >= 0) if w.numel() else torch.ones((), dtype=torch.bool))
    if rows is not None:
        flags.append((rows.detach() == rows.detach()).all())  # no NaN (+inf rows are a form's own)
    if not flags:  # nothing left to check
        return
    ok = flags[0]
    for flag in flags[1:]:
        ok = ok & flag.to(ok.device)
    if bool(ok):
        return
    # something is wrong: find it (the error path may read as much as it likes)
    for name, x in points.items():
        finite_rows = torch.isfinite(x.detach()).reshape(x.shape[0], -1).all(dim=1)
        if not bool(finite_rows.all()):
            bad = torch.nonzero(~finite_rows).flatten()
            raise ValueError(
                f"{name} contains NaN or Inf in {bad.numel()} row(s), first at row {int(bad[0])}; "
                "the loss of such a batch is undefined"
            )
    if temperature is not None and not (math.isfinite(float(temperature.detach())) and float(temperature.detach()) > 0):
        raise ValueError(f"temperature must be finite and > 0, got {float(temperature.detach())}")
    if weight is not None and not bool(flags[len(points) + (temperature is not None)]):
        raise ValueError("weight must be finite and >= 0 everywhere")
    if rows is not None and bool(torch.isnan(rows.detach()).any()):
        raise ValueError(_overflow_message(points, distance, used_temperature))
    # the sum of finite values overflowed: the points are finite after all


def _overflow_message(points: dict[str, torch.Tensor], distance: str, temperature: torch.Tensor | None) -> str:
    z = next(iter(points.values()))
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    largest = torch.finfo(dtype).max
    t = float("nan") if temperature is None else float(temperature.detach())
    if distance == "euclidean":
        what = (
            f"squared Euclidean distances divided by T = {t:g} exceed {largest:.3g} (points more than about "
            f"{math.sqrt(largest * t):.2g} apart)"
        )
    else:
        what = f"the cosine logits reach 2 / T = {2 / t:.3g} at T = {t:g}"
    return (
        f"the loss's logits -d/T overflow {str(dtype).removeprefix('torch.')}: {what}. Scale the points "
        "down, raise the temperature, or compute in float64"
    )
