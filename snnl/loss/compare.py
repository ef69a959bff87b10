"""Run every backend this machine can run on one random batch and compare.

A quick check that the installation works and of what each backend costs
here; the real measurements live in ``bench/``.
"""

from __future__ import annotations

import os
import time

import torch

from .functional import soft_nearest_neighbor_loss
from .validation import triton_available


def usable_backends(device: torch.device) -> list[str]:
    backends = ["reference", "chunked"]
    if triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        backends.append("triton")
    return backends


def compare_backends(
    batch: int = 2048,
    dim: int = 70,
    classes: int = 10,
    temperature: float = 0.5,
    distance: str = "cosine",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Loss, gradient agreement with the reference and wall time per backend."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    results, reference_grad = [], None
    for backend in usable_backends(device):
        zb = z.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = soft_nearest_neighbor_loss(zb, labels, temperature, distance=distance, backend=backend)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if reference_grad is None:
            reference_grad = zb.grad
        max_grad_diff = float((zb.grad - reference_grad).abs().max())
        results.append({"backend": backend, "loss": float(loss.detach()), "max_grad_diff": max_grad_diff, "seconds": seconds})
    return results
