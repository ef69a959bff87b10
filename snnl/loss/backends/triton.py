"""The fused Triton kernels (``backend="triton"``): forward and backward of
the queries against the keys, never a b x b matrix.

The kernels: ``snnl.kernels.pair_kernels`` (partial sums per part of the
key range forward, partial gradient rows backward) and ``snnl.kernels.rows``
(everything O(b * d) around them: operands, the parts added in a fixed
order, the exact pass for far rows, the gradient of the points).  A call is
a plan of launches (``forward_plan``, ``backward_plan``), on the GPU with no
host synchronisation:

    forward:  prepare (per input), forward, finish-forward
    backward: coefficients, then per input (one, or two for queries vs keys):
              backward, its far pass (no trips without far rows),
              finish-backward; and one sum for a learned T.

The backend runs these plans, and ``snnl.kernel_tools.lab`` compiles the
same plans, so the compiled-code checks inspect the launches the loss makes.
The per-row algebra is ``rowwise``'s and the far rows' the CPU path's
(``blocked.far``).  These functions run inside the ``snnl::triton_*``
operators (``snnl.loss.ops``): compiled graphs, fake tensors and export see
one node and never trace into Triton, its interpreter or the autotuner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ...optional import triton_available
from ..options import Inputs, LossOptions, Upstream
from ..rowwise import FAR, compute_dtype, euclidean_centre

# the registry's description of this backend (snnl.loss.registry)
SUMMARY = (
    "fused forward/backward Triton kernels, deterministic (no atomics); CUDA, or the Triton interpreter on the CPU"
)
MEMORY = "O(b d)"
OPERATOR = True
CASTS_INPUTS = False  # half inputs go to the tensor cores as they are

# A TileConfig to use instead of the tuned one (the tests force small tiles
# so that small batches span several of them); None: tuned per shape.
CONFIG = None


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


def _kernels():
    # Imported on first use so that importing snnl never imports Triton, and so
    # that TRITON_INTERPRET (for CPU tensors) can be set by the caller before the first call.
    from ...kernels import configs, layout, pair_kernels, rows

    return configs, layout, pair_kernels, rows


class Kept(NamedTuple):
    """What the forward pass keeps for the backward one (the operator's saved
    list, by name): each side's operands (``snnl.kernels.rows.Operands``) and
    the Euclidean centre.  Operator outputs may not alias each other: empty
    stand-ins for the keys of the square case and the cosine's centre."""

    q_ops: torch.Tensor
    q_aux: torch.Tensor
    k_ops: torch.Tensor
    k_aux: torch.Tensor
    centre: torch.Tensor


@dataclass
class Plan:
    """The launches of one call, in order, by role (what the lab compiles), and their outputs."""

    launches: list = field(default_factory=list)  # (role, snnl.kernels.configs.Launch)
    outputs: dict = field(default_factory=dict)

    def add(self, role: str, launch_and_outputs):
        launch, outputs = launch_and_outputs
        self.launches.append((role, launch))
        return outputs

    def run(self) -> None:
        for _, launch in self.launches:
            launch.run()


def _offset(inputs: Inputs, options: LossOptions) -> int:
    """Query i is key offset + i; past the last key when the keys are not the queries."""
    if inputs.square:
        return 0
    keys, _ = inputs.key_side()
    return options.self_offset if options.self_offset >= 0 else keys.shape[0]


def _math(inputs: Inputs, options: LossOptions, config):
    layout = _kernels()[1]
    width = -(-inputs.queries.shape[1] // config.block_d) * config.block_d
    return layout.math_for(inputs.queries.dtype, options.precision, options.euclidean, width <= config.block_d)


def forward_plan(inputs: Inputs, options: LossOptions, config) -> tuple[Plan, Kept]:
    """The forward launches for the pair kernels' ``config`` (their outputs in
    ``plan.outputs["statistics"]``, ``snnl.kernels.rows.Statistics``), and
    what the backward pass keeps."""
    _, _, pair_kernels, rows = _kernels()
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    euclidean, square = options.euclidean, inputs.square
    acc = compute_dtype(queries.dtype)
    centre = euclidean_centre(queries, inputs.keys) if euclidean else queries.new_empty(0, dtype=acc)
    plan = Plan()

    def prepare(x, role):
        stand_in = centre if euclidean else x  # never read for the cosine distance
        return plan.add(
            role,
            rows.prepare_launch(x, stand_in, precision=options.precision, euclidean=euclidean, block_d=config.block_d),
        )

    q_operands = prepare(queries, "prepare")
    k_operands = q_operands if square else prepare(keys, "prepare-keys")
    q = rows.side(q_operands, query_labels.contiguous(), euclidean)
    k = q if square else rows.side(k_operands, key_labels.contiguous(), euclidean)
    math = _math(inputs, options, config)
    offset = _offset(inputs, options)
    sums = plan.add("forward", pair_kernels.forward_launch(q, k, temperature, offset, config=config, math=math))
    plan.outputs["statistics"] = plan.add(
        "finish-forward",
        rows.finish_forward_launch(q, k, temperature, offset, sums, far=FAR[acc], eps=options.eps, math=math),
    )
    kept = Kept(
        q_operands.ops,
        q_operands.aux,
        queries.new_empty(0) if square else k_operands.ops,
        queries.new_empty(0, dtype=acc) if square else k_operands.aux,
        centre,
    )
    return plan, kept


def backward_plan(
    upstream: Upstream, lse_all, lse_same, kept: Kept, inputs: Inputs, options: LossOptions, temperature_grad: bool,
    config,
) -> Plan:  # fmt: skip
    """The backward launches (their outputs in ``plan.outputs``: "queries"
    and, for keys, "keys", each (gradient, the rows' shares of dL/dT))."""
    configs, _, pair_kernels, rows = _kernels()
    queries, _, query_labels, _, temperature = inputs
    keys, key_labels = inputs.key_side()
    euclidean, square = options.euclidean, inputs.square
    acc = compute_dtype(queries.dtype)
    q_operands = rows.Operands(kept.q_ops, kept.q_aux)
    k_operands = q_operands if square else rows.Operands(kept.k_ops, kept.k_aux)
    q = rows.side(q_operands, query_labels.contiguous(), euclidean)
    k = q if square else rows.side(k_operands, key_labels.contiguous(), euclidean)
    math = _math(inputs, options, config)
    plan = Plan()
    coefficients, any_far = plan.add(
        "coefficients", rows.coefficients_launch(lse_all, lse_same, upstream, eps=options.eps, far=FAR[acc])
    )
    far_config = CONFIG or configs.far_pass_config(queries.shape[1], queries.dtype)

    def side_gradient(role, x, operands, this, other, own, theirs, self_delta, weighted):
        launch = dict(self_delta=self_delta, weighted=weighted, any_far=any_far)
        parts = plan.add(
            role,
            pair_kernels.backward_launch(this, other, temperature, own, theirs, config=config, math=math, **launch),
        )
        far_parts = plan.add(
            "backward-far",
            pair_kernels.backward_launch(
                this, other, temperature, own, theirs, config=far_config, math=math, far_pass=True, **launch
            ),
        )
        return plan.add(
            "finish-backward",
            rows.finish_backward_launch(
                parts,
                far_parts,
                x,
                kept.centre if euclidean else operands.aux,
                operands.aux,
                temperature,
                euclidean=euclidean,
            ),  # fmt: skip
        )

    if square:
        plan.outputs["queries"] = side_gradient(
            "backward", queries, q_operands, q, q, coefficients, coefficients, 0, temperature_grad
        )
    else:
        offset = _offset(inputs, options)
        plan.outputs["queries"] = side_gradient(
            "backward-queries", queries, q_operands, q, k, coefficients, None, offset, temperature_grad
        )
        # the keys' gradient from the queries' terms: key j is query j - offset
        plan.outputs["keys"] = side_gradient(
            "backward-keys", keys, k_operands, k, q, None, coefficients, -offset, False
        )
    return plan


def _tuned(kind: str, inputs: Inputs, options: LossOptions, make_plan):
    """The pair kernels' configuration: CONFIG if set, else the fastest
    candidate for this shape (``snnl.kernels.configs.tuned_config``), each
    timed on the pair launch of its own plan (the launches before it run once)."""
    if CONFIG is not None:
        return CONFIG
    configs = _kernels()[0]
    queries = inputs.queries
    keys, _ = inputs.key_side()

    def pair_launch(config):
        plan = make_plan(config)
        for role, launch in plan.launches:
            if role.startswith(kind):
                return launch
            launch.run()
        raise AssertionError(f"a {kind} plan without a {kind} launch")

    return configs.tuned_config(
        kind,
        max(queries.shape[0], keys.shape[0]),
        queries.shape[1],
        queries.dtype,
        options.precision,
        options.euclidean,
        pair_launch,
        queries.device,
    )


def saved_like(inputs: Inputs, options: LossOptions) -> list[torch.Tensor]:
    """Empty tensors shaped as ``forward``'s kept operands (``Kept``), from
    metadata only (the operator's fake implementation)."""
    configs, layout, _, _ = _kernels()
    queries = inputs.queries
    acc = compute_dtype(queries.dtype)

    def operands(x):
        block_d = CONFIG.block_d if CONFIG is not None else configs.feature_block(x.shape[1], x.dtype)
        width = -(-x.shape[1] // block_d) * block_d
        planes = layout.planes(x.dtype, options.precision)
        return [x.new_empty((x.shape[0], planes, width)), x.new_empty((2, x.shape[0]), dtype=acc)]

    keys = [queries.new_empty(0), queries.new_empty(0, dtype=acc)] if inputs.square else operands(inputs.keys)
    centre = queries.new_empty(queries.shape[1] if options.euclidean else 0, dtype=acc)
    return [*operands(queries), *keys, centre]


def forward(inputs: Inputs, options: LossOptions):
    """(rows, lse_all, lse_same, kept operands): the raw points (the kernels
    normalise them for the cosine distance and centre them for the Euclidean
    one; half inputs stay half for the tensor cores and accumulate in fp32)."""
    config = _tuned("forward", inputs, options, lambda c: forward_plan(inputs, options, c)[0])
    plan, kept = forward_plan(inputs, options, config)
    plan.run()
    statistics = plan.outputs["statistics"]
    return statistics.rows, statistics.lse_all, statistics.lse_same, list(kept)


def backward(
    upstream: Upstream, lse_all, lse_same, saved, inputs: Inputs, options: LossOptions, temperature_grad: bool
):
    """(grad_queries, grad_keys or None, grad_temperature or None); ``saved``:
    what ``forward`` kept."""
    kept = Kept(*saved)

    def make_plan(config):
        return backward_plan(upstream, lse_all, lse_same, kept, inputs, options, temperature_grad, config)

    plan = make_plan(_tuned("backward", inputs, options, make_plan))
    plan.run()
    grad_queries, t_share = plan.outputs["queries"]
    grad_keys = None if inputs.square else plan.outputs["keys"][0]
    grad_t = t_share.sum() if temperature_grad else None  # the rows' shares of dl/dT
    return grad_queries, grad_keys, grad_t
