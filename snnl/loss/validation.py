"""Argument checks for the public loss: once, at the top, naming the argument.

Bad input must fail loudly here rather than turn into a NaN somewhere in a
training run.  The data-dependent checks (NaN/Inf in z, the value of a tensor
temperature) cost one device synchronisation per call.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

DISTANCES = ("cosine", "euclidean")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "reference", "chunked", "blocked", "triton")
PRECISIONS = ("tf32x3", "tf32", "ieee")  # snnl.kernels.soft_nearest_neighbor.PRECISIONS


def _choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_options(distance, eps, reduction, backend, precision="tf32x3") -> float:
    _choice("distance", distance, DISTANCES)
    _choice("reduction", reduction, REDUCTIONS)
    _choice("backend", backend, BACKENDS)
    _choice("precision", precision, PRECISIONS)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return eps


def check_batch(z, labels) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(f"z must have a floating-point dtype, got {z.dtype}")
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D (batch, features), got shape {tuple(z.shape)}")
    b, d = z.shape
    if b < 2:
        raise ValueError(f"z must hold at least 2 rows (the loss compares rows with each other), got {b}")
    if d < 1:
        raise ValueError("z has no features (shape (b, 0))")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype (class ids), got {labels.dtype}")
    if tuple(labels.shape) != (b,):
        raise ValueError(f"labels must have shape ({b},) to match z's {b} rows, got {tuple(labels.shape)}")
    if labels.device != z.device:
        raise ValueError(f"z is on {z.device} but labels are on {labels.device}; put them on the same device")
    _check_finite(z, "z")


def _check_finite(x, name: str) -> None:
    """NaN or Inf anywhere in ``x`` is an error naming the first bad row.

    One pass: the sum of a tensor with a NaN or an Inf is NaN or infinite.
    Only when it is (or when finite values overflow it) are the rows checked
    one by one."""
    # detached: reading a number out of a tensor that requires grad makes torch warn
    total = x.detach().sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if math.isfinite(float(total)):
        return  # one reduction and its synchronisation
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"{name} contains NaN or Inf in {bad.numel()} row(s), first at row {int(bad[0])}; "
            "the loss of such a batch is undefined"
        )


def check_queries(queries, query_labels, keys, offset) -> None:
    """Queries compared with keys: same features, device and dtype; rows in range."""
    if not isinstance(queries, torch.Tensor) or not isinstance(query_labels, torch.Tensor):
        raise TypeError("queries and query_labels must be torch.Tensors")
    if queries.dim() != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries must be 2-D with {keys.shape[1]} features like the keys, got shape {tuple(queries.shape)}")
    if queries.dtype != keys.dtype or queries.device != keys.device:
        raise ValueError("queries and keys must share dtype and device")
    if query_labels.dtype == torch.bool or query_labels.is_floating_point() or tuple(query_labels.shape) != (queries.shape[0],):
        raise ValueError(f"query_labels must be integer class ids of shape ({queries.shape[0]},)")
    if query_labels.device != queries.device:
        raise ValueError("queries and query_labels must be on the same device")
    if isinstance(offset, bool) or int(offset) != offset or offset < 0 or offset + queries.shape[0] > keys.shape[0]:
        raise ValueError(
            f"offset must place the {queries.shape[0]} queries inside the {keys.shape[0]} keys, got offset={offset!r}"
        )
    _check_finite(queries, "queries")


def check_temperature(temperature, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim tensor on ``device`` in ``dtype``; a tensor input keeps its autograd graph."""
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"temperature must be a scalar (0-dim tensor), got shape {tuple(temperature.shape)}")
        if not temperature.is_floating_point():
            raise TypeError(f"temperature tensor must be floating-point, got {temperature.dtype}")
        value = float(temperature.detach())
        tensor = temperature.to(device=device, dtype=dtype)
    elif isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        value = float(temperature)
        tensor = None
    else:
        raise TypeError(f"temperature must be a float or a 0-dim tensor, got {type(temperature).__name__}")
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"temperature must be finite and > 0, got {value}")
    if tensor is None:  # filled on the device: no copy from the host, which would synchronise
        tensor = torch.full((), value, device=device, dtype=dtype)
    return tensor


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_triton_usable(z: torch.Tensor) -> None:
    if not triton_available():
        raise ImportError(
            "backend='triton' needs Triton: it ships with the CUDA builds of torch; "
            "elsewhere `pip install triton` (CPU tensors then also need TRITON_INTERPRET=1)"
        )
    if z.device.type == "cuda":
        return
    if z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        if z.dtype == torch.bfloat16:
            # Triton's interpreter computes bf16 products wrongly (3.9: loss 8.81
            # instead of 1.37, NaN gradients): refuse rather than return numbers.
            raise TypeError("backend='triton' under the Triton interpreter (CPU tensors) cannot compute bfloat16 "
                            "inputs correctly; use float32 or float16 there, or backend='blocked'")
        return
    raise RuntimeError(
        f"backend='triton' needs CUDA tensors (z is on {z.device}); CPU tensors run only under the "
        "Triton interpreter, with TRITON_INTERPRET=1 set before Triton is imported. "
        "Use backend='chunked' (or 'auto') on the CPU."
    )
