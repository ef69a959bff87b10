"""Scale-out on PyTorch's own distributed stack (torchrun, DDP, NCCL or gloo).

The global-batch soft nearest neighbor loss: every process holds a slice of
the global batch; the codes and labels of all processes are gathered with a
differentiable all-gather, each process computes the losses of its own rows
against the whole gathered batch, and the gradients of the gathered copies
flow back to the process that owns each row.  Summed over processes, the
result equals the single-process loss on the concatenated batch, loss and
gradients alike.

DistributedDataParallel averages parameter gradients over the N processes, so
a trainer backpropagates N times its share (``snnl.train`` does): the average
is then the gradient of the global batch's loss.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .loss.functional import soft_nearest_neighbor_rows
from .loss.rowwise import reduce_rows


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "auto") -> torch.device:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs)
    and return this process's device (``cuda:LOCAL_RANK`` with CUDA)."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def gather_sizes(n: int, device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device))
    return [int(s) for s in sizes]


class _AllGather(torch.autograd.Function):
    """Differentiable all-gather of equally shaped tensors, stacked along a new
    first dimension.  Backward: every process holds gradients for all copies;
    summing them over processes (all-reduce) gives each owner the gradient of
    its own tensor.  Public collectives only, so gloo and NCCL both work."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank()]


def all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every process's ``x`` (rows may differ in number), keeping
    the autograd graph: the gradient of each gathered row returns to its owner."""
    largest = max(sizes)
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, largest - x.shape[0]))
    if x.requires_grad:
        parts = _AllGather.apply(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def global_soft_nearest_neighbor_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    *,
    distance: str = "cosine",
    eps: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """This process's share of the soft nearest neighbor loss of the global batch.

    ``z`` and ``labels`` are this process's rows.  Returns, for ``"sum"`` and
    ``"mean"``, the sum of this process's row losses (divided by the number of
    rows that count in the whole global batch for ``"mean"``), so that the
    shares of all processes add up to the single-process loss of the
    concatenated batch; ``"none"`` gives this process's per-row losses.
    Without an initialised process group it is ``soft_nearest_neighbor_loss``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    if not is_initialized():
        from .loss import soft_nearest_neighbor_loss

        return soft_nearest_neighbor_loss(z, labels, temperature, distance=distance, eps=eps, reduction=reduction,
                                          backend=backend)
    sizes = gather_sizes(z.shape[0], z.device)
    keys = all_gather_rows(z, sizes)
    key_labels = all_gather_rows(labels, sizes)
    offset = sum(sizes[: rank()])
    if z.shape[0] == 0:
        # No rows here this time, but the backward of the all-gather is a
        # collective every process must join: keep the keys in the graph.
        rows = z.new_zeros(0, dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
        local = 0.0 * keys.sum()
    else:
        rows = soft_nearest_neighbor_rows(z, labels, keys, key_labels, temperature, offset=offset,
                                          distance=distance, eps=eps, backend=backend)
        local = reduce_rows(rows, "sum")
    if reduction == "none":
        return rows
    if reduction == "sum":
        return local
    kept = torch.isfinite(rows).sum().to(torch.float64)
    dist.all_reduce(kept)
    return local / kept.clamp_min(1).to(local.dtype)


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a detached copy; the tensor itself in one process)."""
    if not is_initialized():
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor
