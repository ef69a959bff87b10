"""The fast backends as PyTorch operators.

Each backend with ``OPERATOR = True`` (``snnl.loss.registry``) is two
``torch.library`` operators (CPU and CUDA kernels) with fake (meta)
implementations, their flat schemas derived from the records of
``snnl.loss.options``:

    snnl::<name>_forward(<Inputs>, <LossOptions>) -> (rows, lse_all, lse_same, saved[])
    snnl::<name>_backward(<Upstream>, lse_all, lse_same, saved[], <Inputs>, <LossOptions>,
                          bool temperature_grad) -> (grad_queries, grad_keys, grad_temperature)

(the per-row losses, each query's two log-sum-exps of ``snnl.loss.rowwise``,
and what the backward pass needs kept; the backward operator takes the
gradients of the forward's outputs, ``Upstream``), so that ``torch.compile``
(``fullgraph=True``, CUDA graphs), ``FakeTensorMode``, meta tensors and
``torch.export`` see one opaque node per operator and never trace into the
tiles, Triton, its interpreter or its autotuner.  A backend module provides
``forward(inputs, options)``, ``backward(upstream, lse_all, lse_same, saved,
inputs, options, temperature_grad)`` and ``saved_like(inputs, options)``
(what ``forward`` keeps, as empty tensors: the fake implementation).

``rows`` ties them together with an ``autograd.Function`` in the
``setup_context`` style (torch 2.13's ``register_autograd`` does not compose
with ``torch.func``), so that autograd, ``torch.func`` and ``torch.compile``
all go through the same nodes:

- ``grad`` / ``vjp``: the backward operator;
- second-order gradients (``create_graph=True``, ``torch.func.grad`` of a
  gradient) and higher: the backward operator is itself differentiable; its
  derivative is that of the reference formula (``backends.reference``),
  recomputed with b x b matrices: exact, at the reference's O(b^2) memory;
- forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``): custom
  operators have none, so ``rows`` takes the reference formula then, O(b^2)
  memory;
- ``vmap``: one call per batch entry.

The operators called directly (``torch.ops.snnl.blocked_forward(...)``) are
differentiable as well, with the same backward operator (autograd registered
with ``torch.library.register_autograd``): the per-row losses and the
log-sum-exps; their kept operands are buffers for the backward operator and
do not require grad.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import registry
from .backends import reference
from .options import NO_SELF_PAIR, Inputs, LossOptions, Upstream, flatten, rebuild, schema
from .rowwise import compute_dtype, rows_loss

__all__ = ["NO_SELF_PAIR", "RowLosses", "forward_ad_active", "rows"]


def _reference_vjp(inputs: Inputs, options: LossOptions):
    """The first-order gradients of the reference formula's outputs (the
    per-row losses and log-sum-exps) as a function of (the upstream
    gradients, queries, keys, temperature), written with ``torch.func`` so
    that it can be differentiated again under autograd and ``torch.func``
    alike: what the backward operators compute (square case: the function
    takes no keys)."""

    def outputs(queries, keys, temperature):
        points = inputs._replace(queries=queries, keys=keys, temperature=temperature)
        lse_all, lse_same, has_same = reference.statistics(points, options)
        rows = rows_loss(lse_all, lse_same, options.eps)
        # eps = 0: rows with no same-class key are +inf, and lse_same is -inf: constants, no gradient
        return torch.where(torch.isfinite(rows), rows, 0.0), lse_all, torch.where(has_same, lse_same, 0.0)

    if inputs.square:

        def vjp_square(upstream, queries, temperature):
            _, pullback = torch.func.vjp(lambda q, t: outputs(q, None, t), queries, temperature)
            return pullback(upstream)

        return vjp_square

    def vjp(upstream, queries, keys, temperature):
        _, pullback = torch.func.vjp(outputs, queries, keys, temperature)
        return pullback(upstream)

    return vjp


def _second_order(upstream: Upstream, inputs: Inputs, options: LossOptions, grad_grads):
    """The derivative of the first-order gradients (the backward operator's
    outputs) with respect to (the upstream gradients, queries, keys,
    temperature): the reference formula's, differentiated with torch.func so
    that the result is differentiable again, to any order.  Returns
    (gradients of the upstream gradients, as ``Upstream``, grad_q, grad_k, grad_t)."""
    grad_grad_q, grad_grad_k, grad_grad_t = grad_grads
    given = Upstream._make(torch.zeros_like(upstream.rows) if g is None else g for g in upstream)
    vjp = _reference_vjp(inputs, options)
    pullback: Any
    result: Any
    if inputs.square:
        result = torch.func.vjp(vjp, tuple(given), inputs.queries, inputs.temperature)
        pullback = result[1]
        grad_up, grad_q, grad_t = pullback((grad_grad_q, grad_grad_t))
        grad_k = None
    else:
        result = torch.func.vjp(vjp, tuple(given), inputs.queries, inputs.keys, inputs.temperature)
        pullback = result[1]
        grad_up, grad_q, grad_k, grad_t = pullback((grad_grad_q, grad_grad_k, grad_grad_t))
    # no gradient for an upstream gradient that was not given
    grad_up = Upstream._make(None if g is None else d for g, d in zip(upstream, grad_up))
    return grad_up, grad_q, grad_k, grad_t


def forward_ad_active() -> bool:
    """Whether forward-mode AD is running (``torch.func.jvp`` at any level,
    or ``torch.autograd.forward_ad``): custom operators have no forward-mode
    formula, so the loss then takes the reference formula."""
    if torch.compiler.is_compiling():
        return False
    if torch.autograd.forward_ad._current_level >= 0:
        return True
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(interpreter.key() == TransformType.Jvp for interpreter in retrieve_all_functorch_interpreters())


def _select(x, dim, i):
    # options and names pass through (vmap gives a record's in_dims as a tuple of Nones)
    return x.select(dim, i) if isinstance(x, Tensor) and dim is not None else x


def _loop(function, info, in_dims, args):
    """A vmap rule: ``function`` once per batch entry, the results stacked (the
    operators take one batch; vmap is for torch.func users, e.g. per-sample
    gradients, not for speed)."""
    outputs = [function.apply(*(_select(x, dim, i) for x, dim in zip(args, in_dims))) for i in range(info.batch_size)]
    stacked = tuple(torch.stack(parts) for parts in zip(*outputs))
    return stacked, (0,) * len(stacked)


def _save(ctx, **named) -> None:
    """``ctx.save_for_backward`` by name: each value a tensor, None or a list of them."""
    flat: list = []
    layout: dict[str, tuple[int, int | None]] = {}
    for key, value in named.items():
        if isinstance(value, list):
            layout[key] = (len(flat), len(value))
            flat.extend(value)
        else:
            layout[key] = (len(flat), None)
            flat.append(value)
    ctx.save_for_backward(*flat)
    ctx.layout = layout


class _Saved:
    """What ``_save`` kept, by name."""

    def __init__(self, ctx):
        tensors = ctx.saved_tensors
        self._kept = {
            key: tensors[start] if count is None else list(tensors[start : start + count])
            for key, (start, count) in ctx.layout.items()
        }

    def __getattr__(self, key: str) -> Any:
        return self._kept[key]


def _input_gradients(inputs: Inputs, grad_q, grad_k, grad_t) -> tuple:
    """One gradient per field of ``Inputs``: None for the labels and for the keys of the square case."""
    return tuple(Inputs._make((grad_q, None if inputs.square else grad_k, None, None, grad_t)))


# One library for the operators.  Defined with torch.library's low-level
# API: ``torch.library.custom_op`` wraps each call in a dynamo guard whose
# first use imports torch._dynamo (1.4 s here), a first call ten times the
# formula's at b = 1,024.
_LIBRARY = torch.library.Library("snnl", "DEF")
_FORWARD_SCHEMA = f"({schema(Inputs)}, {schema(LossOptions)}) -> (Tensor, Tensor, Tensor, Tensor[])"
_BACKWARD_SCHEMA = (
    f"({schema(Upstream, prefix='grad_')}, Tensor lse_all, Tensor lse_same, Tensor[] saved, {schema(Inputs)}, "
    f"{schema(LossOptions)}, bool temperature_grad) -> (Tensor, Tensor, Tensor)"
)
DEVICES = ("CPU", "CUDA")  # the fast backends' devices (the Triton interpreter runs on CPU tensors)


class _Operators:
    """A backend's two operators, called with the records."""

    def __init__(self, name: str):
        self.forward_op = getattr(torch.ops.snnl, f"{name}_forward").default
        self.backward_op = getattr(torch.ops.snnl, f"{name}_backward").default

    def forward(self, inputs: Inputs, options: LossOptions):
        return self.forward_op(*flatten(inputs, options))

    def backward(self, upstream: Upstream, statistics, saved, inputs: Inputs, options: LossOptions, temperature_grad):
        return self.backward_op(*upstream, *statistics, list(saved), *flatten(inputs, options), temperature_grad)


def _define(backend: registry.Backend) -> _Operators:
    """Register the forward and backward operators of ``backend`` with their
    fake implementations and autograd, and return them."""
    impl = backend.module
    name = backend.name

    # the kernels compute, they never record a graph (autograd goes through
    # _Rows, or the autograd registered below)
    @torch.no_grad()
    def forward(*args):
        rows, lse_all, lse_same, saved = impl.forward(*rebuild(args, Inputs, LossOptions))
        return rows, lse_all, lse_same, list(saved)

    def forward_fake(*args):
        inputs, options = rebuild(args, Inputs, LossOptions)
        queries = inputs.queries
        n, acc = queries.shape[0], compute_dtype(queries.dtype)
        per_row = [queries.new_empty(n, dtype=acc) for _ in range(3)]  # rows, lse_all, lse_same
        return (*per_row, list(impl.saved_like(inputs, options)))

    @torch.no_grad()
    def backward(*args):
        upstream, lse_all, lse_same, saved, *rest = rebuild(args, Upstream)
        inputs, options, temperature_grad = rebuild(rest, Inputs, LossOptions)
        grad_q, grad_k, grad_t = impl.backward(upstream, lse_all, lse_same, saved, inputs, options, temperature_grad)
        # operator outputs are tensors: empty / zero stand-ins for what is not there
        temperature = inputs.temperature
        return (
            grad_q,
            inputs.queries.new_empty(0) if grad_k is None else grad_k,
            torch.zeros_like(temperature) if grad_t is None else grad_t.to(temperature.dtype).reshape(()),
        )

    def backward_fake(*args):
        _, _, _, _, *rest = rebuild(args, Upstream)
        inputs, _, _ = rebuild(rest, Inputs, LossOptions)
        queries, keys = inputs.queries, inputs.keys
        return (
            torch.empty_like(queries),
            queries.new_empty(0) if keys is None else torch.empty_like(keys),
            torch.empty_like(inputs.temperature),
        )

    for op, op_schema, real, fake in (
        (f"{name}_forward", _FORWARD_SCHEMA, forward, forward_fake),
        (f"{name}_backward", _BACKWARD_SCHEMA, backward, backward_fake),
    ):
        _LIBRARY.define(op + op_schema)
        for device in DEVICES:
            _LIBRARY.impl(op, real, device)
        torch.library.register_fake(f"snnl::{op}", fake, lib=_LIBRARY)
    _register_autograd(name)
    return _Operators(name)


def _register_autograd(name: str) -> None:
    """Autograd for the operators called directly: the forward operator's
    through the backward operator (``_Backward``: differentiable again), the
    backward operator's through the reference formula's second order.
    (torch.library calls setup_context with the keywords inputs= and output=.)"""

    def forward_setup(ctx, inputs, output):
        points, options = rebuild(inputs, Inputs, LossOptions)
        _, lse_all, lse_same, saved = output
        ctx.mark_non_differentiable(*saved)  # buffers for the backward operator
        _save(ctx, inputs=list(points), statistics=[lse_all, lse_same], saved=list(saved))
        ctx.options = options

    def forward_backward(ctx, grad_rows, grad_lse_all, grad_lse_same, _):
        kept = _Saved(ctx)
        inputs = Inputs(*kept.inputs)
        temperature_grad = ctx.needs_input_grad[Inputs._fields.index("temperature")]
        upstream = Upstream(grad_rows, grad_lse_all, grad_lse_same)
        grads = _first_order(name, upstream, kept, inputs, ctx.options, temperature_grad)
        return (*_input_gradients(inputs, *grads), *(None for _ in LossOptions._fields))

    def backward_setup(ctx, inputs, output):
        upstream, _, _, saved, *rest = rebuild(inputs, Upstream)
        points, options, _ = rebuild(rest, Inputs, LossOptions)
        _save(ctx, upstream=list(upstream), inputs=list(points))
        ctx.options, ctx.n_saved = options, len(saved)

    def backward_backward(ctx, *grad_grads):
        kept = _Saved(ctx)
        inputs = Inputs(*kept.inputs)
        grad_up, grad_q, grad_k, grad_t = _second_order(Upstream(*kept.upstream), inputs, ctx.options, grad_grads)
        # the upstream gradients, lse_all, lse_same, saved, the inputs, the options, temperature_grad
        return (
            *grad_up,
            None,
            None,
            [None] * ctx.n_saved,
            *_input_gradients(inputs, grad_q, grad_k, grad_t),
            *(None for _ in LossOptions._fields),
            None,
        )

    torch.library.register_autograd(
        f"snnl::{name}_forward", forward_backward, setup_context=forward_setup, lib=_LIBRARY
    )
    torch.library.register_autograd(
        f"snnl::{name}_backward", backward_backward, setup_context=backward_setup, lib=_LIBRARY
    )


def _first_order(
    backend: str, upstream: Upstream, kept: _Saved, inputs: Inputs, options: LossOptions, temperature_grad: bool
):
    """(grad_queries, grad_keys, grad_temperature) from the backward operator,
    differentiable once more (``_Backward``) outside compiled code."""
    if (upstream.lse_all is None) != (upstream.lse_same is None):  # both or neither, for the backends
        zeros = torch.zeros_like(upstream.rows)
        upstream = upstream._replace(
            lse_all=zeros if upstream.lse_all is None else upstream.lse_all,
            lse_same=zeros if upstream.lse_same is None else upstream.lse_same,
        )
    # dense: a gradient of a sum arrives expanded (stride 0), and the kernels read rows one after another
    upstream = Upstream._make(None if g is None else g.contiguous() for g in upstream)
    if torch.compiler.is_compiling():
        # compiled graphs have no double backward (torch.compile refuses
        # create_graph=True itself), and dynamo cannot trace a Function
        # applied inside a backward: the operator alone
        return _OPS[backend].backward(upstream, kept.statistics, kept.saved, inputs, options, temperature_grad)
    return _Backward.apply(
        backend, options, temperature_grad, len(kept.saved), *upstream, *kept.statistics, *inputs, *kept.saved
    )


class _Backward(torch.autograd.Function):
    """The backward operator, differentiable once more: its derivative is the
    reference formula's second order (``_second_order``)."""

    @staticmethod
    def forward(backend, options, temperature_grad, n_saved, *tensors):
        upstream, lse_all, lse_same, *rest = rebuild(tensors, Upstream)
        inputs, saved = Inputs(*rest[: len(rest) - n_saved]), rest[len(rest) - n_saved :]
        return _OPS[backend].backward(upstream, (lse_all, lse_same), saved, inputs, options, temperature_grad)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, options, _, n_saved, *tensors = inputs
        upstream, _, _, *rest = rebuild(tensors, Upstream)
        _save(ctx, upstream=list(upstream), inputs=rest[: len(rest) - n_saved])
        ctx.options, ctx.n_saved = options, n_saved

    @staticmethod
    def backward(ctx, *grad_grads):
        kept = _Saved(ctx)
        inputs = Inputs(*kept.inputs)
        grad_up, grad_q, grad_k, grad_t = _second_order(Upstream(*kept.upstream), inputs, ctx.options, grad_grads)
        # backend, options, temperature_grad, n_saved, the upstream gradients, lse_all, lse_same,
        # the inputs, the kept operands
        return (
            None,
            None,
            None,
            None,
            *grad_up,
            None,
            None,
            *_input_gradients(inputs, grad_q, grad_k, grad_t),
            *([None] * ctx.n_saved),
        )

    @staticmethod
    def vmap(info, in_dims, *args):
        return _loop(_Backward, info, in_dims, args)


class _Rows(torch.autograd.Function):
    """Per-query losses through a backend's operators (see the module docstring)."""

    @staticmethod
    def forward(backend, options, *tensors):
        rows, lse_all, lse_same, saved = _OPS[backend].forward(Inputs(*tensors), options)
        return (rows, lse_all, lse_same, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        backend, options, *tensors = inputs
        _, lse_all, lse_same, *saved = output
        ctx.mark_non_differentiable(lse_all, lse_same, *saved)  # rows() returns only the losses
        ctx.set_materialize_grads(False)  # no zeros made for the outputs that have no gradient
        _save(ctx, inputs=tensors, statistics=[lse_all, lse_same], saved=saved)
        ctx.backend, ctx.options = backend, options

    @staticmethod
    def backward(ctx, grad_rows, *_):
        if grad_rows is None:  # the losses were not used
            return (None, None, *(None for _ in Inputs._fields))
        kept = _Saved(ctx)
        inputs = Inputs(*kept.inputs)
        temperature_grad = ctx.needs_input_grad[2 + Inputs._fields.index("temperature")]
        upstream = Upstream(grad_rows, None, None)
        grad_q, grad_k, grad_t = _first_order(ctx.backend, upstream, kept, inputs, ctx.options, temperature_grad)
        return (None, None, *_input_gradients(inputs, grad_q, grad_k, grad_t if temperature_grad else None))

    @staticmethod
    def vmap(info, in_dims, *args):
        return _loop(_Rows, info, in_dims, args)


_OPS = {name: _define(backend) for name, backend in registry.BACKENDS.items() if backend.operator}


class RowLosses(NamedTuple):
    """What ``rows`` returns: the per-query losses; with ``with_positives``
    whether each query has a same-class key, else None; and whether the path
    found the points finite and no loss NaN on its way (the value check
    need not read them again)."""

    rows: Tensor
    has_positive: Tensor | None
    values_checked: bool = False


def rows(inputs: Inputs, options: LossOptions, backend: str, with_positives: bool = False) -> RowLosses:
    """The per-query losses with ``backend`` (a registry name, not ``auto``);
    inputs already validated and cast as the backend wants them.  Under
    forward-mode AD: the reference formula (custom operators have no
    forward-mode derivative)."""
    entry = registry.BACKENDS[backend]
    if not entry.operator or forward_ad_active():
        out, has_positive = reference.rows(inputs, options)
        return RowLosses(out, has_positive if with_positives else None)
    fast = entry.eager_rows(inputs, options)  # a backend's eager path with its own backward, if any
    if fast is not None:  # it serves only calls whose points and sums it found in range
        out, has_positive = fast
        return RowLosses(out, has_positive if with_positives else None, values_checked=True)
    eager = entry.eager_statistics(inputs, options)  # a backend's plain-torch path for this call, if any
    if eager is not None:
        lse_all, lse_same, has_positive = eager
        return RowLosses(rows_loss(lse_all, lse_same, options.eps), has_positive if with_positives else None)
    out, _, lse_same, *_ = _Rows.apply(backend, options, *inputs)
    # lse_same is -inf exactly when there is no same-class key (NaN, an overflow, stays in: a NaN loss)
    return RowLosses(out, (lse_same != -torch.inf) if with_positives else None)


def statistics(inputs: Inputs, options: LossOptions, backend: str) -> tuple[Tensor, Tensor]:
    """(lse_all, lse_same) per query with ``backend``, both differentiable (to
    any order): what the other forms of the loss build on (``snnl.loss.forms``).
    Through the raw forward operator, whose autograd is registered; the
    reference formula under forward-mode AD, as ``rows``, and under the
    ``torch.func`` transforms, which that registration does not support
    (b x b matrices there)."""
    entry = registry.BACKENDS[backend]
    functorch = not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(inputs.queries)
    if not entry.operator or forward_ad_active() or functorch:
        lse_all, lse_same, _ = reference.statistics(inputs, options)
        return lse_all, lse_same
    eager = entry.eager_statistics(inputs, options)
    if eager is not None:
        return eager[0], eager[1]
    _, lse_all, lse_same, _ = _OPS[backend].forward(inputs, options)
    return lse_all, lse_same
