"""The fast backends as PyTorch operators.

Each backend with ``operator=True`` in ``snnl.loss.registry`` is two
``torch.library`` operators (CPU and CUDA kernels) with fake (meta)
implementations,

    snnl::<name>_forward(queries, keys?, query_labels, key_labels?, temperature,
                         self_offset, distance, eps, precision)
        -> (rows, lse_all, lse_same, saved[])
    snnl::<name>_backward(grad_rows, queries, keys?, query_labels, key_labels?,
                          temperature, lse_all, lse_same, saved[], self_offset,
                          distance, eps, precision, temperature_grad)
        -> (grad_queries, grad_keys, grad_temperature)

so that ``torch.compile`` (``fullgraph=True``, CUDA graphs), ``FakeTensorMode``,
meta tensors and ``torch.export`` see one opaque node of the right shape and
never trace into the tiles, Triton, its interpreter or its autotuner.

``rows`` ties them together with ``autograd.Function``s in the
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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import registry
from .backends import reference
from .rowwise import compute_dtype

# rows' self_offset when the keys are not the queries: no pair is left out
NO_SELF_PAIR = -1


def _reference_vjp(self_offset: int, distance: str, eps: float, query_labels, key_labels):
    """The first-order gradients of the reference formula as a function of
    (grad_rows, queries, keys, temperature), written with ``torch.func`` so
    that it can be differentiated again under autograd and ``torch.func``
    alike: what the backward operators compute (keys None: the square case,
    and the function takes no keys)."""

    def rows(queries, keys, temperature):
        out, _ = reference.rows(queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps)
        return torch.where(torch.isfinite(out), out, 0.0)  # eps = 0: rows with no same-class key, +inf, no gradient

    def vjp(grad_rows, queries, keys, temperature):
        _, pullback = torch.func.vjp(rows, queries, keys, temperature)
        return pullback(grad_rows)

    def vjp_square(grad_rows, queries, temperature):
        _, pullback = torch.func.vjp(lambda q, t: rows(q, None, t), queries, temperature)
        return pullback(grad_rows)

    return vjp, vjp_square


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
    return x if dim is None or x is None else x.select(dim, i)


def _loop(function, info, in_dims, args):
    """A vmap rule: ``function`` once per batch entry, the results stacked (the
    operators take one batch; vmap is for torch.func users, e.g. per-sample
    gradients, not for speed)."""
    outputs = [function.apply(*(_select(x, dim, i) for x, dim in zip(args, in_dims))) for i in range(info.batch_size)]
    stacked = tuple(torch.stack(parts) for parts in zip(*outputs))
    return stacked, (0,) * len(stacked)


# One library for the operators.  Defined with torch.library's low-level
# API: ``torch.library.custom_op`` wraps each call in a dynamo guard whose
# first use imports torch._dynamo (1.4 s here), a first call ten times the
# formula's at b = 1,024.
_LIBRARY = torch.library.Library("snnl", "DEF")
_FORWARD_SCHEMA = (
    "(Tensor queries, Tensor? keys, Tensor query_labels, Tensor? key_labels, Tensor temperature, "
    "int self_offset, str distance, float eps, str precision) -> (Tensor, Tensor, Tensor, Tensor[])"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_rows, Tensor queries, Tensor? keys, Tensor query_labels, Tensor? key_labels, "
    "Tensor temperature, Tensor lse_all, Tensor lse_same, Tensor[] saved, int self_offset, "
    "str distance, float eps, str precision, bool temperature_grad) -> (Tensor, Tensor, Tensor)"
)
DEVICES = ("CPU", "CUDA")  # the fast backends' devices (the Triton interpreter runs on CPU tensors)


def _define(backend: registry.Backend):
    """Register the forward and backward operators of ``backend`` with their
    fake implementations, and return them."""
    impl = backend.module
    name = backend.name

    # the kernels compute, they never record a graph (autograd goes through
    # _Rows / _Backward; a graph that calls the operators directly, as an
    # exported program does, gets their values)
    @torch.no_grad()
    def forward(queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps, precision):
        rows, lse_all, lse_same, saved = impl.forward(
            queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps, precision
        )
        return rows, lse_all, lse_same, list(saved)

    def forward_fake(queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps, precision):
        n, acc = queries.shape[0], compute_dtype(queries.dtype)
        saved = [queries.new_empty(shape, dtype=dtype) for shape, dtype in impl.saved_shapes(queries, keys, precision)]
        return queries.new_empty(n, dtype=acc), queries.new_empty(n, dtype=acc), queries.new_empty(n, dtype=acc), saved

    @torch.no_grad()
    def backward(
        grad_rows,
        queries,
        keys,
        query_labels,
        key_labels,
        temperature,
        lse_all,
        lse_same,
        saved,
        self_offset,
        distance,
        eps,
        precision,
        temperature_grad,
    ):
        grad_q, grad_k, grad_t = impl.backward(
            grad_rows,
            queries,
            keys,
            query_labels,
            key_labels,
            temperature,
            lse_all,
            lse_same,
            saved,
            self_offset,
            distance,
            eps,
            precision,
            temperature_grad,
        )
        # operator outputs are tensors: empty / zero stand-ins for what is not there
        return (
            grad_q,
            queries.new_empty(0) if grad_k is None else grad_k,
            torch.zeros_like(temperature) if grad_t is None else grad_t.to(temperature.dtype).reshape(()),
        )

    def backward_fake(
        grad_rows,
        queries,
        keys,
        query_labels,
        key_labels,
        temperature,
        lse_all,
        lse_same,
        saved,
        self_offset,
        distance,
        eps,
        precision,
        temperature_grad,
    ):
        return (
            torch.empty_like(queries),
            queries.new_empty(0) if keys is None else torch.empty_like(keys),
            torch.empty_like(temperature),
        )

    for op, schema, real, fake in (
        (f"{name}_forward", _FORWARD_SCHEMA, forward, forward_fake),
        (f"{name}_backward", _BACKWARD_SCHEMA, backward, backward_fake),
    ):
        _LIBRARY.define(op + schema)
        for device in DEVICES:
            _LIBRARY.impl(op, real, device)
        torch.library.register_fake(f"snnl::{op}", fake, lib=_LIBRARY)
    return getattr(torch.ops.snnl, f"{name}_forward").default, getattr(torch.ops.snnl, f"{name}_backward").default


class _Backward(torch.autograd.Function):
    """The backward operator, differentiable once more: its derivative is the
    reference formula's second order (``_reference_vjp`` differentiated)."""

    @staticmethod
    def forward(
        grad_rows,
        queries,
        keys,
        query_labels,
        key_labels,
        temperature,
        lse_all,
        lse_same,
        backend,
        self_offset,
        distance,
        eps,
        precision,
        temperature_grad,
        *saved,
    ):
        return _OPS[backend][1](
            grad_rows,
            queries,
            keys,
            query_labels,
            key_labels,
            temperature,
            lse_all,
            lse_same,
            list(saved),
            self_offset,
            distance,
            eps,
            precision,
            temperature_grad,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_rows, queries, keys, query_labels, key_labels, temperature, _, _, backend, self_offset, distance, eps = (
            inputs[:12]
        )
        ctx.save_for_backward(grad_rows, queries, keys, query_labels, key_labels, temperature)
        ctx.options = (backend, self_offset, distance, eps, len(inputs) - 14)

    @staticmethod
    def backward(ctx, grad_grad_q, grad_grad_k, grad_grad_t):
        backend, self_offset, distance, eps, n_saved = ctx.options
        grad_rows, queries, keys, query_labels, key_labels, temperature = ctx.saved_tensors
        # the reference formula's first order, differentiated (with torch.func,
        # so that the result is differentiable again, to any order)
        vjp, vjp_square = _reference_vjp(self_offset, distance, eps, query_labels, key_labels)
        if keys is None:
            _, pullback = torch.func.vjp(vjp_square, grad_rows, queries, temperature)
            grad_g, grad_q, grad_t = pullback((grad_grad_q, grad_grad_t))
            grad_k = None
        else:
            _, pullback = torch.func.vjp(vjp, grad_rows, queries, keys, temperature)
            grad_g, grad_q, grad_k, grad_t = pullback((grad_grad_q, grad_grad_k, grad_grad_t))
        return (grad_g, grad_q, grad_k, None, None, grad_t, *([None] * (8 + n_saved)))

    @staticmethod
    def vmap(info, in_dims, *args):
        return _loop(_Backward, info, in_dims, args)


class _Rows(torch.autograd.Function):
    """Per-query losses through a backend's operators (see the module docstring)."""

    @staticmethod
    def forward(queries, keys, query_labels, key_labels, temperature, backend, self_offset, distance, eps, precision):
        rows, lse_all, lse_same, saved = _OPS[backend][0](
            queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps, precision
        )
        return (rows, lse_all, lse_same, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        queries, keys, query_labels, key_labels, temperature, backend, self_offset, distance, eps, precision = inputs
        _, lse_all, lse_same, *saved = output
        ctx.mark_non_differentiable(lse_all, lse_same, *saved)
        ctx.set_materialize_grads(False)  # no zeros made for the outputs that have no gradient
        ctx.save_for_backward(queries, keys, query_labels, key_labels, temperature, lse_all, lse_same, *saved)
        ctx.options = (backend, self_offset, distance, eps, precision)

    @staticmethod
    def backward(ctx, grad_rows, *_):
        if grad_rows is None:  # the losses were not used
            return (None,) * 10
        queries, keys, query_labels, key_labels, temperature, lse_all, lse_same, *saved = ctx.saved_tensors
        backend, self_offset, distance, eps, precision = ctx.options
        temperature_grad = ctx.needs_input_grad[4]
        args = (grad_rows.contiguous(), queries, keys, query_labels, key_labels, temperature, lse_all, lse_same)
        if torch.compiler.is_compiling():
            # compiled graphs have no double backward (torch.compile refuses
            # create_graph=True itself), and dynamo cannot trace a Function
            # applied inside a backward: the operator alone
            grad_q, grad_k, grad_t = _OPS[backend][1](
                *args, saved, self_offset, distance, eps, precision, temperature_grad
            )
        else:
            grad_q, grad_k, grad_t = _Backward.apply(
                *args, backend, self_offset, distance, eps, precision, temperature_grad, *saved
            )
        return (
            grad_q,
            grad_k if keys is not None else None,
            None,
            None,
            grad_t if temperature_grad else None,
            None,
            None,
            None,
            None,
            None,
        )

    @staticmethod
    def vmap(info, in_dims, *args):
        return _loop(_Rows, info, in_dims, args)


_OPS = {name: _define(backend) for name, backend in registry.BACKENDS.items() if backend.operator}


def rows(
    queries: Tensor,
    keys: Tensor | None,
    query_labels: Tensor,
    key_labels: Tensor | None,
    temperature: Tensor,
    backend: str,
    self_offset: int,
    distance: str,
    eps: float,
    precision: str,
    with_positives: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """(per-query losses, with ``with_positives`` whether each query has a
    same-class key, else None) with ``backend`` (a registry name, not
    ``auto``); inputs already validated and cast as the backend wants them.
    Under forward-mode AD: the reference formula (custom operators have no
    forward-mode derivative)."""
    if not registry.BACKENDS[backend].operator or forward_ad_active():
        out, has_positive = reference.rows(
            queries, keys, query_labels, key_labels, temperature, self_offset, distance, eps
        )
        return out, has_positive if with_positives else None
    out, _, lse_same, *_ = _Rows.apply(
        queries, keys, query_labels, key_labels, temperature, backend, self_offset, distance, eps, precision
    )
    # lse_same is -inf exactly when there is no same-class key
    return out, (lse_same > -math.inf) if with_positives else None
