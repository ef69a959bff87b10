"""Compiled Triton kernels on a CUDA device against a float64 chunked reference.

Skipped without a GPU.  The reference sees the very same (rounded) inputs in
float64, so the differences measured are the kernels' own: fp32 dot products
(IEEE, no TF32) and, for half-precision inputs, the rounding of the unit rows
to 8 (bf16) or 11 (fp16) bits before the tensor-core products.
"""

import pytest
import torch
import torch.nn.functional as F

from snnl import soft_nearest_neighbor_loss
from snnl.loss.chunked import chunked_rows

from .loss_cases import assert_close_scaled

pytestmark = pytest.mark.gpu

# (loss rtol/atol, gradient rtol relative to the largest entry)
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2)}


def float64_reference(z, labels, t, distance, eps):
    z = z.detach().double().requires_grad_(True)
    t = torch.tensor(t, dtype=torch.float64, device=z.device)
    cosine = distance == "cosine"
    x = F.normalize(z, dim=1) if cosine else z
    return z, chunked_rows(x, labels, t, cosine, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("b,d", [(1000, 70), (4099, 128), (16384, 16), (65536, 70)])
def test_compiled_kernels_match_float64(b, d, distance, dtype):
    torch.manual_seed(b + d)
    device = "cuda"
    z = torch.randn(b, d, device=device)
    if distance == "euclidean":
        z = z / d**0.5
    z = z.to(dtype)
    labels = torch.randint(0, 10, (b,), device=device)
    t, eps = 0.5, 1e-5
    weights = torch.randn(b, device=device, dtype=torch.float64)

    zk = z.detach().clone().requires_grad_(True)
    rows = soft_nearest_neighbor_loss(zk, labels, t, distance=distance, eps=eps, reduction="none", backend="triton")
    (rows.double() * weights).sum().backward()

    zr, ref = float64_reference(z, labels, t, distance, eps)
    (ref * weights).sum().backward()

    loss_tol, grad_tol = TOLERANCES[dtype]
    torch.testing.assert_close(rows.double(), ref.detach(), rtol=loss_tol, atol=loss_tol)
    assert_close_scaled(zk.grad.double(), zr.grad, grad_tol)


def test_compiled_temperature_gradient_and_determinism():
    torch.manual_seed(0)
    z = torch.randn(5000, 70, device="cuda")
    labels = torch.randint(0, 47, (5000,), device="cuda")
    grads = []
    for _ in range(2):
        zk = z.clone().requires_grad_(True)
        t = torch.tensor(0.2, device="cuda", requires_grad=True)
        soft_nearest_neighbor_loss(zk, labels, t, backend="triton").backward()
        grads.append((zk.grad.clone(), t.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    zr = z.double().requires_grad_(True)
    tr = torch.tensor(0.2, dtype=torch.float64, device="cuda", requires_grad=True)
    soft_nearest_neighbor_loss(zr, labels, tr, backend="chunked").backward()
    torch.testing.assert_close(grads[0][1].double(), tr.grad, rtol=1e-3, atol=1e-6)
