"""``soft_nearest_neighbor_loss``: validation, backend dispatch, reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import validation
from .blocked import blocked_rows
from .chunked import chunked_rows
from .reference import reference_rows
from .compiled import Compiled
from .rowwise import reduce_rows


# mean / sum over the finite rows: one fused kernel (and one backward) on the
# GPU instead of about ten small ones around the fused loss's few
_reduce_rows = Compiled(reduce_rows)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_backend(backend: str, z: torch.Tensor) -> str:
    """``auto``: the fused kernels for CUDA tensors when Triton imports, else
    ``blocked`` (symmetric block pairs, compiled tiles: the fastest path on
    CPUs at every batch size measured, bench/results/loss-cpu-*.json)."""
    if backend != "auto":
        return backend
    if z.device.type == "cuda" and validation.triton_available():
        return "triton"
    return "blocked"


def soft_nearest_neighbor_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    *,
    distance: str = "cosine",
    eps: float = 1e-5,
    reduction: str = "mean",
    backend: str = "auto",
    precision: str = "tf32x3",
) -> torch.Tensor:
    """Soft nearest neighbor loss (Frosst, Papernot & Hinton, 2019) of a batch.

    For rows z_i with labels y_i and logits s_ij = -d_ij / T (j != i):

        l_i = -log(eps + N_i / (eps + S_i)),
        S_i = sum_{j != i} exp(s_ij),   N_i = sum_{j != i, y_j = y_i} exp(s_ij).

    Args:
        z: (b, d) floating-point batch, b >= 2.
        labels: (b,) integer class ids on z's device.
        temperature: T > 0, a float or a 0-dim tensor; a tensor that requires
            grad receives a gradient (a learned temperature).
        distance: ``"cosine"`` (1 - cosine similarity) or ``"euclidean"``
            (squared Euclidean distance).
        eps: stability constant of the authors' convention (1e-5).  With
            ``eps=0`` the loss is logsumexp_all - logsumexp_same; rows with no
            same-class neighbour are then ``+inf`` in ``reduction="none"`` and
            are left out of ``mean`` and ``sum`` (0 if every row is left out).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row vector).
        backend: ``"auto"`` (Triton for CUDA tensors when available, else
            ``"chunked"``), ``"reference"`` (b x b matrices, the oracle),
            ``"chunked"`` (PyTorch, O(b * block) memory) or ``"triton"`` (fused
            kernels; CPU tensors only under TRITON_INTERPRET=1).
        precision: the fused kernels' fp32 products on the tensor cores:
            ``"tf32x3"`` (three TF32 products: fp32-level accuracy, the
            default), ``"tf32"`` (one: about 1e-3 relative error in the dot
            products, fastest) or ``"ieee"`` (fp32 FMA, no tensor cores).
            The other backends compute in full fp32 (or fp64) and ignore it.

    Returns:
        The reduced loss, or the per-row losses for ``reduction="none"``; fp64
        for fp64 input, fp32 otherwise (half-precision input is accumulated in
        fp32).
    """
    eps = validation.check_options(distance, eps, reduction, backend, precision)
    validation.check_batch(z, labels)
    temperature = validation.check_temperature(temperature, z.device, compute_dtype(z.dtype))
    return _reduce_rows(_dispatch(z, labels, temperature, distance, eps, backend, precision=precision), reduction)


def soft_nearest_neighbor_rows(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    *,
    offset: int,
    distance: str = "cosine",
    eps: float = 1e-5,
    backend: str = "auto",
    precision: str = "tf32x3",
) -> torch.Tensor:
    """Per-row losses of ``queries`` against ``keys``; query i is key ``offset + i``.

    The building block of the global-batch loss under torch.distributed
    (``snnl.distributed``): a process's own rows against the gathered batch.
    Gradients flow to both ``queries`` and ``keys``.  Same options and
    conventions as ``soft_nearest_neighbor_loss`` (no reduction).
    """
    eps = validation.check_options(distance, eps, "none", backend, precision)
    validation.check_batch(keys, key_labels)
    validation.check_queries(queries, query_labels, keys, offset)
    temperature = validation.check_temperature(temperature, keys.device, compute_dtype(keys.dtype))
    return _dispatch(queries, query_labels, temperature, distance, eps, backend, precision=precision,
                     keys=keys, key_labels=key_labels, offset=offset)


def _dispatch(z, labels, temperature, distance, eps, backend, *, precision="tf32x3", keys=None, key_labels=None,
              offset=0):
    """Per-row losses with the chosen backend (inputs already validated)."""
    dtype = temperature.dtype
    backend = resolve_backend(backend, z)
    cosine = distance == "cosine"
    rectangular = dict(keys=keys, key_labels=key_labels, offset=offset)
    if backend == "reference":
        if keys is not None:
            rectangular["keys"] = keys.to(dtype)
        return reference_rows(z.to(dtype), labels, temperature, distance, eps, **rectangular)
    if backend == "blocked":  # takes the raw points: it normalises them itself, fused
        if keys is not None:
            rectangular["keys"] = keys.to(dtype)
        return blocked_rows(z.to(dtype), labels, temperature, not cosine, eps, **rectangular)
    if backend == "chunked":
        prepare = (lambda x: F.normalize(x.to(dtype), dim=1)) if cosine else (lambda x: x.to(dtype))
        if keys is not None:
            rectangular["keys"] = prepare(keys)
        return chunked_rows(prepare(z), labels, temperature, cosine, eps, **rectangular)
    validation.check_triton_usable(z)
    rectangular["precision"] = precision
    from .fused import fused_rows

    # The raw points: the kernels normalise them (cosine, in fp32 for half
    # inputs, which stay half for the tensor cores) and accumulate in fp32.
    return fused_rows(z, labels, temperature, cosine, eps, **rectangular)
