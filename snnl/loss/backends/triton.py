"""The fused Triton kernels (``backend="triton"``): forward and backward of
the queries against the keys, never a b x b matrix.

The kernels: ``snnl.kernels.pair_kernels`` (partial sums per part of the
key range forward, partial gradient rows backward) and ``snnl.kernels.rows``
(everything O(b * d) around them: operands, the parts added in a fixed
order, the exact pass for far rows, the gradient of the points).  A call is,
on the GPU, with no host synchronisation:

    forward:  prepare (per input), forward, finish_forward
    backward: coefficients (the per-row inputs), then per input (one, or
              two for queries vs keys): backward, its far pass (no trips
              without far rows), finish_backward; and one sum for a learned T.

The per-row algebra is ``rowwise``'s and the far rows' the CPU path's (``blocked.far``).
These functions run inside the ``snnl::triton_*`` operators (``snnl.loss.ops``):
compiled graphs, fake tensors and export see one node and never trace into
Triton, its interpreter or the autotuner.
"""

from __future__ import annotations

import os

import torch

from ...optional import triton_available
from ..options import Inputs, LossOptions, Upstream
from ..rowwise import FAR, compute_dtype

# the registry's description of this backend (snnl.loss.registry)
SUMMARY = (
    "fused forward/backward Triton kernels, deterministic (no atomics); CUDA, or the Triton interpreter on the CPU"
)
MEMORY = "O(b d)"
OPERATOR = True
CASTS_INPUTS = False  # half inputs go to the tensor cores as they are


def check_usable(z: torch.Tensor) -> None:
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


# A TileConfig to use instead of the tuned one (the tests force small tiles
# so that small batches span several of them); None: tuned per shape.
CONFIG = None


def _kernels():
    # Imported on first use so that importing snnl never imports Triton, and so
    # that TRITON_INTERPRET (for CPU tensors) can be set by the caller before the first call.
    from ...kernels import configs, pair_kernels, rows

    return configs, pair_kernels, rows


def _key_offset(keys, self_offset: int) -> int:
    """Query i is key offset + i; past the last key when the keys are not the queries."""
    if keys is None:
        return 0
    return self_offset if self_offset >= 0 else keys.shape[0]


def _run(kind, launch_for, n, dim, dtype, precision, euclidean, config, device):
    """Launch with the given configuration, or the tuned one for this shape."""
    configs, _, _ = _kernels()
    if config is None:
        config = configs.tuned_config(kind, n, dim, dtype, precision, euclidean, lambda c: launch_for(c)[0], device)
    launch, outputs = launch_for(config)
    launch.run()
    return outputs


def _pack(q_ops, q_aux, k_ops, k_aux, square: bool) -> list[torch.Tensor]:
    """The operands kept for the backward pass as operator outputs, which may
    not alias each other: an empty stand-in where lo is hi (no 3xTF32 split)
    and for the keys of the square case (they are the queries)."""

    def side(ops, aux):
        hi, lo = ops
        return [hi, hi.new_empty(0) if lo is hi else lo, aux]

    return side(q_ops, q_aux) + (
        [t.new_empty(0) for t in (q_ops[0], q_ops[0], q_aux)] if square else side(k_ops, k_aux)
    )


def _unpack(saved: list[torch.Tensor], square: bool):
    def side(hi, lo, aux):
        return (hi, hi if lo.numel() == 0 else lo), aux

    q_ops, q_aux = side(*saved[:3])
    k_ops, k_aux = (q_ops, q_aux) if square else side(*saved[3:])
    return q_ops, q_aux, k_ops, k_aux


def saved_like(inputs: Inputs, options: LossOptions) -> list[torch.Tensor]:
    """Empty tensors shaped as ``forward``'s kept operands, from metadata only
    (the operator's fake implementation)."""
    queries, keys, precision = inputs.queries, inputs.keys, options.precision
    configs, _, _ = _kernels()
    acc = compute_dtype(queries.dtype)

    def side(x):
        block_d = CONFIG.block_d if CONFIG is not None else configs.feature_block(x.shape[1], x.dtype)
        width = -(-x.shape[1] // block_d) * block_d
        split = x.dtype == torch.float32 and precision == "tf32x3"
        return [((x.shape[0], width), x.dtype), ((x.shape[0], width) if split else (0,), x.dtype), ((x.shape[0],), acc)]

    q = side(queries)
    shapes = q + ([((0,), queries.dtype), ((0,), queries.dtype), ((0,), acc)] if keys is None else side(keys))
    return [queries.new_empty(shape, dtype=dtype) for shape, dtype in shapes]


def forward(inputs: Inputs, options: LossOptions):
    """(rows, lse_all, lse_same, kept operands): the raw points (the kernels
    normalise them for the cosine distance; half inputs stay half for the
    tensor cores and accumulate in fp32)."""
    configs, kernels, rows = _kernels()
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    eps, precision = options.eps, options.precision
    square, cosine, config = inputs.square, options.distance == "cosine", CONFIG
    offset = 0 if square else _key_offset(keys, options.self_offset)
    query_labels = query_labels.contiguous()
    key_labels = query_labels if square else key_labels.contiguous()
    # (hi, lo) for 3xTF32, padded for the feature chunks, and the norms
    block_d = config.block_d if config is not None else None
    q_hi, q_lo, q_aux = rows.prepare(queries, precision, block_d, cosine)
    k_hi, k_lo, k_aux = (q_hi, q_lo, q_aux) if square else rows.prepare(keys, precision, block_d, cosine)
    q_ops, k_ops = (q_hi, q_lo), (k_hi, k_lo)
    q_sq, k_sq = (None, None) if cosine else (q_aux, k_aux)  # the Euclidean distance's |x|^2
    n_keys = keys.shape[0]
    sums = _run(
        "forward",
        lambda c: kernels.forward_launch(
            q_ops, k_ops, query_labels, key_labels, q_sq, k_sq, temperature, offset, config=c, precision=precision
        ),
        max(queries.shape[0], n_keys),
        queries.shape[1],
        queries.dtype,
        precision,
        not cosine,
        config,
        queries.device,
    )
    far = FAR[compute_dtype(queries.dtype)]
    finish, (lse, loss) = rows.finish_forward_launch(
        q_ops, k_ops, query_labels, key_labels, q_sq, k_sq, temperature, offset, sums, far, eps, precision=precision
    )
    finish.run()
    return loss, lse[0], lse[1], _pack(q_ops, q_aux, k_ops, k_aux, square)


def backward(
    upstream: Upstream, lse_all, lse_same, saved, inputs: Inputs, options: LossOptions, temperature_grad: bool
):
    """(grad_queries, grad_keys or None, grad_temperature or None); ``saved``:
    the operands ``forward`` kept."""
    configs, kernels, rows = _kernels()
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    eps, precision = options.eps, options.precision
    square, cosine, config = inputs.square, options.distance == "cosine", CONFIG
    offset = 0 if square else _key_offset(keys, options.self_offset)
    query_labels = query_labels.contiguous()
    key_labels = query_labels if square else key_labels.contiguous()
    q_ops, q_aux, k_ops, k_aux = _unpack(saved, square)
    q_sq, k_sq = (None, None) if cosine else (q_aux, k_aux)
    far = FAR[compute_dtype(queries.dtype)]
    coefficients, (coef, same_coef, exact, any_far) = rows.coefficients_launch(lse_all, lse_same, upstream, eps, far)
    coefficients.run()
    coefs = (coef, same_coef, exact)
    dim = queries.shape[1]

    def backward_pass(
        points, aux, rows_ops, cols_ops, row_labels, col_labels, row_sq, col_sq, row_coefs, col_coefs, delta, weighted
    ):
        def launch_for(c, far_pass=False):
            return kernels.backward_launch(
                rows_ops,
                cols_ops,
                row_labels,
                col_labels,
                row_sq,
                col_sq,
                temperature,
                row_coefs,
                col_coefs,
                delta,
                weighted,
                config=c,
                precision=precision,
                any_far=any_far,
                far_pass=far_pass,
            )

        n_max = max(rows_ops[0].shape[0], cols_ops[0].shape[0])
        parts = _run(
            "backward", launch_for, n_max, dim, rows_ops[0].dtype, precision, not cosine, config, rows_ops[0].device
        )
        # the far rows' exact terms: no trips unless some row is far
        far_launch, far_parts = launch_for(config or configs.far_pass_config(dim, rows_ops[0].dtype), far_pass=True)
        far_launch.run()
        finish, (grad, t_share) = rows.finish_backward_launch(parts, far_parts, points, aux, temperature, cosine)
        finish.run()
        return grad, t_share

    if square:
        grad_queries, t_share = backward_pass(
            queries, q_aux, q_ops, q_ops, query_labels, query_labels, q_sq, q_sq, coefs, coefs, 0, temperature_grad
        )
        grad_keys = None
    else:
        grad_queries, t_share = backward_pass(
            queries, q_aux, q_ops, k_ops, query_labels, key_labels, q_sq, k_sq, coefs, None, offset, temperature_grad
        )
        # the keys' gradient from the queries' terms: key j is query j - offset
        grad_keys, _ = backward_pass(
            keys, k_aux, k_ops, q_ops, key_labels, query_labels, k_sq, q_sq, None, coefs, -offset, False
        )
    grad_t = t_share.sum() if temperature_grad else None  # the rows' shares of dl/dT
    return grad_queries, grad_keys, grad_t
