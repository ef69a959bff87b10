"""Compiled Triton kernels on a CUDA device against the float64 reference.

Skipped without a GPU.  The reference sees the very same (rounded) inputs in
float64, so the differences measured are the kernels' own: fp32 dot products
(IEEE, no TF32) and, for half-precision inputs, the rounding of the unit rows
to 8 (bf16) or 11 (fp16) bits before the tensor-core products.
"""

import pytest
import torch

from snnl import soft_nearest_neighbor_loss

from .loss_cases import assert_close_scaled, reference_rows

pytestmark = pytest.mark.gpu

# (loss rtol/atol, gradient rtol relative to the largest entry)
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float16: (5e-3, 2e-2), torch.bfloat16: (3e-2, 6e-2)}


def float64_reference(z, labels, t, distance, eps):
    z = z.detach().double().requires_grad_(True)
    t = torch.tensor(t, dtype=torch.float64, device=z.device)
    return z, reference_rows(z, labels, t, distance, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
# (65,536 rows: the float64 reference's b x b matrices take 34 GB; 16,384 is its largest here)
@pytest.mark.parametrize("b,d", [(1000, 70), (4099, 128), (16384, 16), (16384, 70)])
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
    soft_nearest_neighbor_loss(zr, labels, tr, backend="blocked").backward()
    torch.testing.assert_close(grads[0][1].double(), tr.grad, rtol=1e-3, atol=1e-6)


def test_cuda_graph_capture_of_a_training_step():
    # mode="reduce-overhead" captures CUDA graphs: any host synchronisation
    # in the loss would break the capture; the replays must match eager
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).cuda()
    x = torch.randn(2048, 64, device="cuda")
    y = torch.randint(0, 10, (2048,), device="cuda")

    def step(x, y):
        loss = soft_nearest_neighbor_loss(model(x), y, 0.5, backend="triton")
        loss.backward()
        return loss.detach()

    eager = step(x, y)
    eager_grads = [p.grad.clone() for p in model.parameters()]
    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    for _ in range(4):  # warm-up, capture, replays
        for p in model.parameters():
            p.grad = None
        out = compiled(x, y).clone()
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), eager_grads):
        assert_close_scaled(p.grad, g, 1e-4)


def test_capture_by_hand_with_checks_off():
    # torch.cuda.graph around an eager call: check_values=False reads no value
    z = torch.randn(1024, 70, device="cuda", requires_grad=True)
    y = torch.randint(0, 10, (1024,), device="cuda")
    soft_nearest_neighbor_loss(z, y, 0.5, backend="triton", check_values=False).backward()  # warm-up: autotuning
    graph = torch.cuda.CUDAGraph()
    z.grad = None
    with torch.cuda.graph(graph):
        loss = soft_nearest_neighbor_loss(z, y, 0.5, backend="triton", check_values=False)
    graph.replay()
    expected = soft_nearest_neighbor_loss(z.detach(), y, 0.5, backend="triton")
    torch.testing.assert_close(loss, expected)
