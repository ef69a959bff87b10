"""The one list of the loss's backends.

Everything that names backends reads it: validation, ``backend="auto"``,
``SNNLoss``, the training configuration, the CLI (``snnl loss``, ``snnl
backends``), the tests and the benchmarks.  Adding a backend is a module in
``snnl.loss.backends`` with the functions ``forward``, ``backward`` and
``saved_shapes`` (see ``blocked``) and one entry here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from ..choices import LOSS_BACKENDS
from .backends import blocked, reference, triton


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _anywhere(z: torch.Tensor) -> None:
    return None


def _check_triton(z: torch.Tensor) -> None:
    """Raises if the fused kernels cannot take ``z`` here (metadata only)."""
    if not triton_available():
        raise ImportError(
            "backend='triton' needs Triton: it ships with the CUDA builds of torch; elsewhere "
            "`pip install triton` (CPU tensors then also need TRITON_INTERPRET=1)"
        )
    if z.device.type == "cuda":
        return
    if z.device.type in ("cpu", "meta") and os.environ.get("TRITON_INTERPRET") == "1":
        if z.dtype == torch.bfloat16:
            # Triton's interpreter computes bf16 products wrongly (3.9: loss 8.81
            # instead of 1.37, NaN gradients): refuse rather than return numbers.
            raise TypeError(
                "backend='triton' under the Triton interpreter (CPU tensors) cannot compute bfloat16 "
                "inputs correctly; use float32 or float16 there, or backend='blocked'"
            )
        return
    raise RuntimeError(
        f"backend='triton' needs CUDA tensors (z is on {z.device}); CPU tensors run only under the "
        "Triton interpreter, with TRITON_INTERPRET=1 set before Triton is imported. Use "
        "backend='blocked' (or 'auto') on the CPU."
    )


@dataclass(frozen=True)
class Backend:
    module: ModuleType  # forward, backward, saved_shapes (or rows, for plain autograd)
    summary: str  # what it is, for the README's table, `snnl backends` and errors
    memory: str  # extra memory of one call, in b (batch) and d (features)
    # registered as torch.library operators (snnl.loss.ops): one opaque node
    # for torch.compile, fake tensors and export; else plain autograd
    operator: bool
    # the inputs are cast to the compute dtype (fp32, fp64 for fp64) before
    # the call; the fused kernels take half inputs as they are
    casts_inputs: bool
    # raises (naming what to do instead) if the backend cannot take z here
    check_usable: Callable[[torch.Tensor], None] = _anywhere

    @property
    def name(self) -> str:
        return self.module.__name__.rsplit(".", 1)[-1]


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            reference,
            "plain PyTorch with b x b matrices, autograd; the oracle the others are tested against",
            "O(b^2)",
            operator=False,
            casts_inputs=True,
        ),
        Backend(
            blocked,
            "the CPU path: tiles of pairs computed once for both directions, a few large torch "
            "operations each, shared out to single-threaded workers; nothing compiled",
            "O(block^2)",
            operator=True,
            casts_inputs=True,
        ),
        Backend(
            triton,
            "fused forward/backward Triton kernels, deterministic (no atomics); CUDA, or the Triton "
            "interpreter on the CPU",
            "O(b d)",
            operator=True,
            casts_inputs=False,
            check_usable=_check_triton,
        ),
    )
}
# what ``backend=`` accepts: the list snnl.choices gives everyone, which must name these backends
CHOICES = LOSS_BACKENDS
if CHOICES != ("auto", *BACKENDS):
    raise ImportError(f"snnl.choices.LOSS_BACKENDS {CHOICES} does not list the registry's backends {tuple(BACKENDS)}")


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
