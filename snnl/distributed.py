"""Scale-out on PyTorch's own distributed stack (torchrun, DDP, NCCL or gloo).

The global-batch soft nearest neighbor loss: every process holds a slice of
the global batch; the codes and labels of all processes are gathered with a
differentiable all-gather, each process computes the losses of its own rows
against the whole gathered batch, and the gradients of the gathered copies
flow back to the process that owns each row.

``global_soft_nearest_neighbor_loss`` returns the loss of the global batch
(the same number on every process) with gradients scaled so that
DistributedDataParallel's averaging over the N processes gives exactly the
single-process gradient of the concatenated batch: call ``backward()`` on it
as it is, as with pytorch-metric-learning's ``DistributedLossWrapper``.
``global_loss_share`` is the building block: this process's share, the
shares of all processes adding up to the loss (``snnl.train.loop`` logs the
shares' all-reduced sum and backpropagates N times its share).
"""

from __future__ import annotations

import datetime
import inspect
import os

import torch
import torch.distributed as dist

from .loss import functional, validation
from .loss.functional import soft_nearest_neighbor_loss


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
    """Leave the process group, after the CPU path's worker threads have ended."""
    from .loss.backends.blocked import workers

    workers.shutdown()
    if is_initialized():
        dist.destroy_process_group()


def _group_size(group) -> int:
    return dist.get_world_size(group)


def gather_sizes(n: int, device, group=None) -> list[int]:
    """Every process's row count (one host read: rows may differ in number)."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(_group_size(group))]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in torch.cat(sizes).tolist()]


class _AllGather(torch.autograd.Function):
    """Differentiable all-gather of equally shaped tensors, stacked along a new
    first dimension.  Backward: every process holds gradients for all copies;
    summing them over processes (all-reduce) gives each owner the gradient of
    its own tensor.  Public collectives only, so gloo and NCCL both work."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(_group_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def all_gather_rows(x: torch.Tensor, sizes: list[int], group=None) -> torch.Tensor:
    """Concatenate every process's ``x`` (rows may differ in number), keeping
    the autograd graph: the gradient of each gathered row returns to its owner."""
    largest = max(sizes)
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, largest - x.shape[0]))
    if x.requires_grad:
        parts = _AllGather.apply(padded, group)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _bind(z, labels, temperature, options: dict) -> dict:
    """The functional's options with its defaults: one signature, checked by the functional's own binding."""
    if "keys" in options or "key_labels" in options:
        raise TypeError(
            "the global-batch loss compares each process's rows with the gathered global batch: "
            "keys / key_labels cannot be given (gather a memory bank yourself and call "
            "soft_nearest_neighbor_loss with keys=)"
        )
    bound = inspect.signature(soft_nearest_neighbor_loss).bind(z, labels, temperature, **options)
    bound.apply_defaults()
    return dict(bound.arguments)


def global_loss_share(
    z: torch.Tensor, labels: torch.Tensor | None = None, temperature=1.0, *, group=None, **options
) -> torch.Tensor:
    """This process's share of the global batch's loss: the shares of all
    processes add up to it (``"none"``: this process's per-row losses).  The
    arguments are ``soft_nearest_neighbor_loss``'s (no keys) and ``group``;
    without an initialised process group it is ``soft_nearest_neighbor_loss``."""
    args = _bind(z, labels, temperature, options)
    if not is_initialized():
        return soft_nearest_neighbor_loss(**args)
    share, _ = _share(args, group)
    return share


def global_soft_nearest_neighbor_loss(
    z: torch.Tensor, labels: torch.Tensor | None = None, temperature=1.0, *, group=None, **options
) -> torch.Tensor:
    """The soft nearest neighbor loss of the global batch, each process
    passing its own rows: ``soft_nearest_neighbor_loss``'s arguments (no
    keys; a multi-view batch's sample ids are global) and ``group``, the
    process group of the data-parallel processes (default: the world).

    The value is the global batch's loss on every process.  Its gradient is N
    times this process's share's, so that after DistributedDataParallel
    averages the N processes' gradients they are the single-process gradients
    of the concatenated batch: no scaling by hand.  ``"none"`` gives this
    process's per-row losses.  One host read per call (the processes' row
    counts, which may differ) and, for ``"mean"`` / ``"sum"``, one all-reduce
    of the value.  Without an initialised process group it is
    ``soft_nearest_neighbor_loss``.
    """
    args = _bind(z, labels, temperature, options)
    if not is_initialized():
        return soft_nearest_neighbor_loss(**args)
    share, reduction = _share(args, group)
    if reduction == "none":
        return share
    world = _group_size(group)
    value = share.detach().clone()
    dist.all_reduce(value, group=group)
    scaled = share * world
    return scaled + (value - scaled).detach()  # the global value, N times the share's gradient


def _share(args: dict, group):
    z, labels, reduction = args.pop("z"), args.pop("labels"), args["reduction"]
    eps = validation.check_options(
        args["distance"], args["eps"], reduction, args["backend"], args["precision"], args["ignore_index"]
    )
    views = z.shape[1] if z.dim() == 3 else 1
    sizes = gather_sizes(z.shape[0], z.device, group)
    first = sum(sizes[: dist.get_rank(group)])
    batch = (
        functional.prepare_rows(z, labels, weight=args["weight"], ignore_index=args["ignore_index"], first_id=first)
        if z.shape[0]
        else None
    )
    if batch is None:
        # No rows here this time, but the backward of the all-gather is a
        # collective every process must join: keep the keys in the graph.
        row_sizes = [s * views for s in sizes]
        keys = all_gather_rows(z.reshape(0, z.shape[-1]), row_sizes, group)
        label_dtype = torch.int64 if labels is None else labels.dtype
        all_gather_rows(torch.zeros(0, dtype=label_dtype, device=z.device), row_sizes, group)  # as the others do
        rows = keys.new_zeros(0, dtype=functional.compute_dtype(z.dtype))
        local = 0.0 * keys.sum()
        if reduction == "none":
            return rows, reduction
        count = torch.zeros((), dtype=local.dtype, device=z.device)
    else:
        row_sizes = [s * views for s in sizes]
        keys = all_gather_rows(batch.queries, row_sizes, group)
        key_labels = all_gather_rows(batch.query_labels, row_sizes, group)
        gathered = functional.Rows(
            batch.queries, batch.query_labels, keys, key_labels, batch.weight, batch.counted, batch.shape
        )
        rows, has_positive = functional.row_losses(
            gathered,
            args["temperature"],
            distance=args["distance"],
            eps=eps,
            backend=args["backend"],
            precision=args["precision"],
            check_values=args["check_values"],
            reduction=reduction,
            self_offset=first * views,
        )
        if reduction == "none":
            return functional.reduce(rows, has_positive, gathered, "none"), reduction
        local, count = functional.reduction_terms(rows, has_positive, gathered, reduction)
    if reduction == "sum":
        return local, reduction
    count = count.detach().clone()
    dist.all_reduce(count, group=group)
    return local / torch.where(count > 0, count, 1.0), reduction


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a detached copy; the tensor itself in one process)."""
    if not is_initialized():
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor


def broadcast_from_main(value):
    """The main process's ``value`` on every process (``value`` itself in one
    process): what one process computed, as a picklable object."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
