"""Run every backend this machine can run on one random batch and compare.

A quick check that the installation works and of what each backend costs
here: the first call of each (in this process) apart from the median of
the calls after it.  The real measurements live in ``bench/``.
"""

from __future__ import annotations

import statistics
import time

import torch

from . import registry
from .functional import soft_nearest_neighbor_loss


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare_backends(
    batch: int = 2048,
    dim: int = 70,
    classes: int = 10,
    temperature: float = 0.5,
    distance: str = "cosine",
    device: str | torch.device = "cpu",
    seed: int = 0,
    repeats: int = 5,
) -> list[dict]:
    """Per usable backend: the loss, its gradient's largest difference from
    the reference's, the first call's time and the median of ``repeats``
    more (forward + backward)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    results, reference_grad = [], None
    for backend in registry.usable(z):
        zb = z.clone().requires_grad_(True)
        out = {}

        def step():
            zb.grad = None
            out["loss"] = soft_nearest_neighbor_loss(zb, labels, temperature, distance=distance, backend=backend)
            out["loss"].backward()

        first = _timed(step, device)
        warm = statistics.median(_timed(step, device) for _ in range(repeats))
        assert zb.grad is not None
        if reference_grad is None:
            reference_grad = zb.grad.clone()
        results.append(
            {
                "backend": backend,
                "loss": float(out["loss"].detach()),
                "max_grad_diff": float((zb.grad - reference_grad).abs().max()),
                "first_seconds": first,
                "seconds": warm,
            }
        )
    return results
