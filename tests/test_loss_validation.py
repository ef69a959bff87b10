"""Bad input fails with a clear error that names the problem; never a silent NaN."""

import math
import os
import warnings

import pytest
import torch

from snnl import SNNLoss, soft_nearest_neighbor_loss
from snnl.loss.registry import CHOICES as BACKENDS


def batch(b=8, d=3):
    return torch.randn(b, d), torch.randint(0, 3, (b,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_z(backend, bad):
    z, y = batch()
    z[5, 1] = bad
    with pytest.raises(ValueError, match=r"z contains NaN or Inf .* row 5"):
        soft_nearest_neighbor_loss(z, y, backend=backend)


@pytest.mark.parametrize("shape", [(8,), (2, 4, 3, 1), ()])
def test_z_not_2d_or_3d(shape):
    with pytest.raises(ValueError, match=r"z must be \(batch, features\) or \(batch, views, features\)"):
        soft_nearest_neighbor_loss(torch.randn(shape), torch.zeros(8, dtype=torch.long))


def test_batch_too_small():
    with pytest.raises(ValueError, match="at least 2 rows"):
        soft_nearest_neighbor_loss(torch.randn(1, 4), torch.zeros(1, dtype=torch.long))


def test_no_features():
    with pytest.raises(ValueError, match="no features"):
        soft_nearest_neighbor_loss(torch.randn(4, 0), torch.zeros(4, dtype=torch.long))


def test_z_wrong_type_and_dtype():
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        soft_nearest_neighbor_loss([[1.0, 2.0], [3.0, 4.0]], torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="z must have a floating-point dtype"):
        soft_nearest_neighbor_loss(torch.ones(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "labels",
    [torch.zeros(7, dtype=torch.long), torch.zeros(8, 1, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)],
)
def test_labels_wrong_shape(labels):
    z, _ = batch()
    with pytest.raises(ValueError, match=r"labels must have shape \(8,\)"):
        soft_nearest_neighbor_loss(z, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_labels_wrong_dtype(dtype):
    z, _ = batch()
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        soft_nearest_neighbor_loss(z, torch.zeros(8, dtype=dtype))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        soft_nearest_neighbor_loss(z, [0] * 8)


@pytest.mark.parametrize(
    "t", [0.0, -1.0, math.nan, math.inf, torch.tensor(0.0), torch.tensor(-2.0), torch.tensor(math.nan)]
)
def test_bad_temperature_values(t):
    z, y = batch()
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        soft_nearest_neighbor_loss(z, y, t)


def test_bad_temperature_types():
    z, y = batch()
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        soft_nearest_neighbor_loss(z, y, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        soft_nearest_neighbor_loss(z, y, torch.ones(1, 1))
    with pytest.raises(TypeError, match="temperature must be a float"):
        soft_nearest_neighbor_loss(z, y, "hot")
    with pytest.raises(TypeError, match="temperature must be a float"):
        soft_nearest_neighbor_loss(z, y, True)
    with pytest.raises(TypeError, match="temperature tensor must be floating-point"):
        soft_nearest_neighbor_loss(z, y, torch.tensor(2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distance": "manhattan"}, "distance must be one of"),
        ({"reduction": "max"}, "reduction must be one of"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"eps": -1e-5}, "eps must be a finite number >= 0"),
        ({"eps": math.nan}, "eps must be a finite number >= 0"),
        ({"precision": "fp16"}, "precision must be one of"),
    ],
)
def test_bad_options(kwargs, match):
    z, y = batch()
    with pytest.raises(ValueError, match=match):
        soft_nearest_neighbor_loss(z, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        SNNLoss(**kwargs)


def test_devices_differ():
    z, y = batch()
    with pytest.raises(ValueError, match="same device"):
        soft_nearest_neighbor_loss(z.to("meta"), y)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z, y = batch()
    with pytest.raises(RuntimeError, match="needs CUDA tensors.*TRITON_INTERPRET=1.*backend='blocked'"):
        soft_nearest_neighbor_loss(z, y, backend="triton")
    assert os.environ.get("TRITON_INTERPRET") is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_checking_a_tensor_that_requires_grad_warns_nothing(backend):
    # the finiteness check reads one number from z; reading it from z itself
    # (not z.detach()) made torch warn on every training run's first batch
    z, y = batch()
    z.requires_grad_(True)
    with warnings.catch_warnings():
        # UserWarning: torch's; the interpreter's numpy warns of log(0) = -inf, meant in the kernel
        warnings.simplefilter("error", UserWarning)
        soft_nearest_neighbor_loss(z, y, backend=backend).backward()
    assert torch.isfinite(z.grad).all()
