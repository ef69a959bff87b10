"""The loss as a PyTorch operator, on every backend: torch.compile with
fullgraph=True and no graph break, fake and meta tensors, torch.export,
torch.func (grad, vmap, jvp), forward-mode AD, exact second-order gradients,
autocast, and the host synchronisations of a call.  (CUDA graphs need a GPU:
tests/test_loss_gpu.py.)"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from snnl import SNNLoss, soft_nearest_neighbor_loss

from .loss_cases import assert_close_scaled


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def _data(b=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 16, generator=g), torch.randint(0, 4, (b,), generator=g)


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("temperature", ["float", "tensor", "module"])
def test_fullgraph_compile_matches_eager_with_no_graph_break(backend, temperature):
    model = _model()
    x, y = _data()
    criterion = SNNLoss(0.5, learn_temperature=True, backend=backend)

    def step(x, y):
        z = model(x)
        if temperature == "module":
            return criterion(z, y)
        return soft_nearest_neighbor_loss(z, y, 0.5 if temperature == "float" else torch.tensor(0.5), backend=backend)

    params = list(model.parameters()) + list(criterion.parameters())
    eager = step(x, y)
    eager_grads = torch.autograd.grad(eager, params, allow_unused=True)
    torch._dynamo.reset()
    assert torch._dynamo.explain(step)(x, y).graph_break_count == 0
    compiled = torch.compile(step, fullgraph=True)
    for _ in range(2):  # and again: no recompilation problem
        out = compiled(x, y)
        grads = torch.autograd.grad(out, params, allow_unused=True)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
        for got, expected in zip(grads, eager_grads):
            if expected is not None:
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_compiled_graph_holds_one_node_per_operator(backend):
    if backend == "reference":
        pytest.skip("the reference is plain torch operations, traced as such")
    model = _model()
    x, y = _data()
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = {"forward": [], "backward": []}

    def recorder(phase):
        def record(gm, example_inputs):
            seen[phase].extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
            return make_boxed_func(gm.forward)

        return record

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y: soft_nearest_neighbor_loss(model(x), y, 0.5, backend=backend),
        backend=aot_autograd(fw_compiler=recorder("forward"), bw_compiler=recorder("backward")),
        fullgraph=True,
    )
    compiled(x, y).backward()
    assert seen["forward"].count(f"snnl.{backend}_forward.default") == 1
    assert seen["backward"].count(f"snnl.{backend}_backward.default") == 1
    # never a trace into the tiles, Triton, its interpreter or the autotuner: torch operations around one node
    assert all(
        name.startswith(("aten.", "snnl.", "<built-in function getitem>"))
        for name in seen["forward"] + seen["backward"]
    ), seen


# --------------------------------------------------------------------------- fake, meta, export


def test_fake_tensors_trace_forward_and_backward(backend):
    with FakeTensorMode():
        z = torch.randn(64, 8, requires_grad=True)
        labels = torch.randint(0, 4, (64,))
        loss = soft_nearest_neighbor_loss(z, labels, 0.5, backend=backend)
        rows = soft_nearest_neighbor_loss(z, labels, 0.5, backend=backend, reduction="none")
        loss.backward()
        assert loss.shape == () and loss.dtype == torch.float32 and rows.shape == (64,) and z.grad.shape == (64, 8)


def test_meta_tensors(backend):
    z = torch.randn(64, 8, device="meta", requires_grad=True)
    loss = soft_nearest_neighbor_loss(z, torch.zeros(64, dtype=torch.long, device="meta"), 0.5, backend=backend)
    loss.backward()
    assert loss.device.type == "meta" and z.grad.shape == (64, 8)


def test_export(backend):
    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _model()

        def forward(self, x, y):
            return soft_nearest_neighbor_loss(self.model(x), y, 0.5, backend=backend)

    x, y = _data()
    module = WithLoss()
    exported = torch.export.export(module, (x, y))
    targets = [str(node.target) for node in exported.graph.nodes]
    if backend != "reference":
        assert f"snnl.{backend}_forward.default" in targets
    torch.testing.assert_close(exported.module()(x, y), module(x, y))


# --------------------------------------------------------------------------- torch.func and forward mode


def _points(b=40, d=6):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, 3, (b,), generator=g)


def test_func_grad_matches_the_reference(backend):
    z, y = _points()
    grad = torch.func.grad(lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend=backend))(z)
    expected = torch.func.grad(lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend="reference"))(z)
    assert_close_scaled(grad, expected, 1e-10)


def test_vmap_and_per_sample_gradients(backend):
    zs = torch.stack([_points()[0] * s for s in (1.0, 0.5, 2.0)])
    y = _points()[1]

    def loss(z, backend=backend):
        return soft_nearest_neighbor_loss(z, y, 0.5, backend=backend)

    torch.testing.assert_close(torch.func.vmap(loss)(zs), torch.stack([loss(z, "reference") for z in zs]))
    per_batch = torch.func.vmap(torch.func.grad(loss))(zs)
    for got, z in zip(per_batch, zs):
        assert_close_scaled(got, torch.func.grad(lambda z: loss(z, "reference"))(z), 1e-10)


def test_forward_mode(backend):
    z, y = _points()
    v = torch.randn_like(z)
    _, tangent = torch.func.jvp(lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend=backend), (z,), (v,))
    _, expected = torch.func.jvp(lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend="reference"), (z,), (v,))
    torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-12)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = soft_nearest_neighbor_loss(fwAD.make_dual(z, v), y, 0.5, backend=backend)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- second order


def _formula(z, labels, t, distance, eps):
    """The loss per row written out with plain autograd ops, independently of
    the library: the gradients of its gradients are autograd's."""
    if distance == "cosine":
        x = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        d = 1 - x @ x.T
    else:
        d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    logits = -d / t
    eye = torch.eye(len(z), dtype=torch.bool)
    w = torch.where(eye, 0.0, torch.exp(logits))  # no exp(-inf): fine at T not too small
    same = (labels[:, None] == labels[None, :]) & ~eye
    s, n = w.sum(1), torch.where(same, w, 0.0).sum(1)
    if eps:
        return -torch.log(eps + n / (eps + s))
    has = same.any(1)
    return torch.where(has, torch.log(s) - torch.log(torch.where(has, n, 1.0)), 0.0)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_gradient_penalty_second_order_is_exact(backend, distance, eps):
    # A gradient penalty whose upstream weights depend on z, rows without a
    # same-class neighbour included: once silently wrong (42-94%), or NaN
    g = torch.Generator().manual_seed(4)
    z0 = torch.randn(24, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (24,), generator=g)
    labels[:2] = torch.tensor([10, 11])  # singletons
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    results = []
    for kind in ("library", "formula"):
        z = z0.clone().requires_grad_(True)
        tt = t.detach().clone().requires_grad_(True)
        if kind == "library":
            rows = soft_nearest_neighbor_loss(
                z, labels, tt, distance=distance, eps=eps, reduction="none", backend=backend
            )
            rows = torch.where(torch.isfinite(rows), rows, 0.0)
        else:
            rows = _formula(z, labels, tt, distance, eps)
        objective = (rows * torch.softmax(z[:, 0], 0)).sum()
        grad_z, grad_t = torch.autograd.grad(objective, [z, tt], create_graph=True)
        penalty = grad_z.pow(2).sum() + grad_t**2
        results.append(torch.autograd.grad(penalty, [z, tt]))
    for got, expected in zip(*results):
        assert torch.isfinite(got).all()
        assert_close_scaled(got, expected, 1e-9)


def test_third_order_through_torch_func(backend):
    z, y = _points(16, 3)

    def hvp_norm(backend):
        def first(z):
            return torch.func.grad(lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend=backend))(z).pow(2).sum()

        return torch.func.grad(lambda z: torch.func.grad(first)(z).pow(2).sum())(z)

    assert_close_scaled(hvp_norm(backend), hvp_norm("reference"), 1e-9)


# --------------------------------------------------------------------------- autocast and dtypes


def test_autocast_leaves_the_loss_in_fp32(backend):
    # under autocast the codes are half; the loss's own products must not be
    dtype = torch.float16 if backend == "triton" else torch.bfloat16  # the interpreter mishandles bf16
    linear = torch.nn.Linear(32, 16)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(256, 32, generator=g), torch.randint(0, 4, (256,), generator=g)
    with torch.autocast("cpu", dtype=dtype):
        z = linear(x)
        loss = soft_nearest_neighbor_loss(z, y, 0.05, backend=backend)
    assert z.dtype == dtype and loss.dtype == torch.float32
    codes = z.detach().double().requires_grad_(True)
    oracle = soft_nearest_neighbor_loss(codes, y, 0.05, backend="reference")
    # the CPU paths compute in fp32 from the half codes; the fused kernels take
    # half operands to the tensor cores as documented (their unit rows rounded
    # to fp16's 11 bits), accumulating in fp32
    tolerance = 2e-3 if backend == "triton" else 1e-5
    assert abs(float(loss.detach()) - float(oracle.detach())) <= tolerance * abs(float(oracle.detach()))
    (grad,) = torch.autograd.grad(loss, z)
    (expected,) = torch.autograd.grad(oracle, codes)
    # the gradient is returned in z's dtype: its rounding, no more
    assert_close_scaled(grad.double(), expected, 2e-2 if dtype == torch.bfloat16 else 3e-3)


# --------------------------------------------------------------------------- host synchronisations


class _Syncs(TorchDispatchMode):
    """Counts the operations that make a host wait for a device."""

    NAMES = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "bincount", "masked_select", "item"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.NAMES:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("check_values", [True, False])
def test_host_synchronisations_per_call(backend, check_values, tiled):
    # the operators are opaque here: what the fused kernels do inside is
    # counted by the op counter (tests/test_compiled_code.py), and the CPU
    # path's inside is host work.  The CPU path's eager one-tile code is
    # host work too (CPU tensors only, no device to wait for: below), so the
    # operator takes every batch here
    x, y = _data()
    model = _model()
    learned = SNNLoss(0.5, learn_temperature=True, backend=backend, check_values=check_values)
    for call in (
        lambda z: soft_nearest_neighbor_loss(z, y, 0.5, backend=backend, check_values=check_values),
        lambda z: learned(z, y),
    ):
        z = model(x)
        with _Syncs() as forward:
            loss = call(z)
        with _Syncs() as backward:
            loss.backward()
        assert (forward.count, backward.count) == ((1, 0) if check_values else (0, 0))


@pytest.mark.parametrize("check_values", [True, False])
@pytest.mark.parametrize("temperature", ["float", "tensor"])
def test_the_one_tile_path_reads_one_flag(check_values, temperature):
    # CPU tensors only (never under compile, capture or fake tensors): one
    # read that the points and the rows' sums were in range, which is also
    # the value check's of the points; a tensor T is still checked
    x, y = _data()
    z = _model()(x)
    t = 0.5 if temperature == "float" else torch.tensor(0.5)
    with _Syncs() as forward:
        loss = soft_nearest_neighbor_loss(z, y, t, backend="blocked", check_values=check_values)
    with _Syncs() as backward:
        loss.backward()
    assert (forward.count, backward.count) == ((2, 0) if check_values and temperature == "tensor" else (1, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_the_cpu_path_compiles_nothing(monkeypatch, distance, dtype):
    # a first call costs what the others do: no torch.compile anywhere on the path
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile was called")

    monkeypatch.setattr(torch, "compile", refuse)
    z, y = _points(1500, 9)
    zz = z.to(dtype).requires_grad_(True)
    soft_nearest_neighbor_loss(zz, y, 0.01, distance=distance, backend="blocked").backward()
    assert zz.grad is not None and torch.isfinite(zz.grad).all()


# --------------------------------------------------------------------------- the raw operators


def _operator_case(square: bool, dtype=torch.float64):
    """(Inputs, LossOptions) of a small batch for a raw operator, inputs requiring grad."""
    from snnl.loss.options import NO_SELF_PAIR, Inputs, LossOptions

    g = torch.Generator().manual_seed(3)
    queries = torch.randn(12, 5, generator=g, dtype=dtype).requires_grad_()
    labels = torch.randint(0, 3, (12,), generator=g)
    keys = None if square else torch.randn(9, 5, generator=g, dtype=dtype).requires_grad_()
    key_labels = None if square else torch.randint(0, 3, (9,), generator=g)
    temperature = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    options = LossOptions(0 if square else NO_SELF_PAIR, "cosine", 1e-5, "tf32x3")
    return Inputs(queries, keys, labels, key_labels, temperature), options


def _operator_backends():
    from snnl.loss import registry

    return [name for name, entry in registry.BACKENDS.items() if entry.operator]


@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("name", _operator_backends())
def test_raw_operators_give_the_reference_gradient(name, square):
    # torch.ops.snnl.<name>_forward called directly: its per-row losses have the
    # reference formula's gradients (queries, keys, temperature), and its own
    # backward operator differentiates once more (second order) like the reference's
    from snnl.loss.backends import reference
    from snnl.loss.options import flatten

    if name == "triton":
        pytest.importorskip("triton")
    inputs, options = _operator_case(square)
    leaves = [t for t in (inputs.queries, inputs.keys, inputs.temperature) if t is not None]
    weights = torch.linspace(-1.0, 2.0, inputs.queries.shape[0], dtype=torch.float64)
    rows, lse_all, lse_same, _ = getattr(torch.ops.snnl, f"{name}_forward")(*flatten(inputs, options))
    # every output is differentiable: an objective that uses each differently
    objective = (rows * weights).sum() + (lse_all * weights.flip(0)).sum() + lse_same.clamp_min(-50.0).sum() / 3
    grads = torch.autograd.grad(objective, leaves, create_graph=True)
    expected_all, expected_same, _ = reference.statistics(inputs, options)
    expected_rows, _ = reference.rows(inputs, options)
    expected_objective = (
        (expected_rows * weights).sum()
        + (expected_all * weights.flip(0)).sum()
        + expected_same.clamp_min(-50.0).sum() / 3
    )
    expected = torch.autograd.grad(expected_objective, leaves, create_graph=True)
    for got, want in ((rows, expected_rows), (lse_all, expected_all), (lse_same, expected_same)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)
    # and the second order, through the raw backward operator's own autograd
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)
    second_expected = torch.autograd.grad(sum(g.square().sum() for g in expected), leaves)
    for got, want in zip(second, second_expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", _operator_backends())
def test_raw_operators_keep_operands_that_do_not_require_grad(name):
    from snnl.loss.options import flatten

    if name == "triton":
        pytest.importorskip("triton")
    inputs, options = _operator_case(square=True)
    rows, lse_all, lse_same, saved = getattr(torch.ops.snnl, f"{name}_forward")(*flatten(inputs, options))
    assert rows.requires_grad and lse_all.requires_grad and lse_same.requires_grad
    assert not any(s.requires_grad for s in saved)


@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("name", _operator_backends())
def test_opcheck_with_gradients(name, square):
    # PyTorch's own operator checks (schema, fake tensors, autograd registration,
    # AOT dispatch) on inputs that require grad, so that the autograd checks run
    # the registered backward rather than pass for want of a gradient
    from snnl.loss.options import flatten

    if name == "triton":
        pytest.importorskip("triton")
    inputs, options = _operator_case(square)
    forward = getattr(torch.ops.snnl, f"{name}_forward").default
    torch.library.opcheck(forward, flatten(inputs, options))
    rows, lse_all, lse_same, saved = forward(*flatten(inputs, options))
    grad_rows = torch.linspace(-1.0, 1.0, rows.shape[0], dtype=rows.dtype).requires_grad_()
    grad_all = torch.linspace(2.0, 1.0, rows.shape[0], dtype=rows.dtype).requires_grad_()
    grad_same = torch.linspace(1.0, -2.0, rows.shape[0], dtype=rows.dtype).requires_grad_()
    backward = getattr(torch.ops.snnl, f"{name}_backward").default
    detached = inputs._replace(**{k: v.detach() for k, v in inputs._asdict().items() if isinstance(v, torch.Tensor)})
    points = detached._replace(
        queries=detached.queries.requires_grad_(), temperature=detached.temperature.requires_grad_()
    )
    torch.library.opcheck(
        backward,
        (
            grad_rows,
            grad_all,
            grad_same,
            lse_all.detach(),
            lse_same.detach(),
            [s.detach() for s in saved],
            *flatten(points, options),
            True,
        ),
    )
