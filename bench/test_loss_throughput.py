"""Soft nearest neighbor loss, forward + backward, side by side in one run.

Backends: every one in ``snnl.loss.registry`` this machine can run (the eager
b x b ``reference`` formula, the ``blocked`` CPU path, the fused ``triton``
kernels) and ``compiled``: ``torch.compile`` of the reference formula.  All
go through the public function with ``check_values=False``, so only the
computation is timed; the cosine distance, fp32, mean reduction and T = 0.5.

    python -m pytest bench/test_loss_throughput.py --loss-sizes smoke
    python -m pytest bench/test_loss_throughput.py --loss-sizes cpu \
        --benchmark-json bench/results/loss-cpu-<machine>.json
    python -m pytest bench/test_loss_throughput.py --loss-sizes full --benchmark-json bench/results/loss-<device>.json

Each case records samples/s, the mean time and the extra peak memory of one
step in ``extra_info``.  On the CPU the run also measures the machine's GEMM
and exp rates (``snnl.machine`` in the JSON) and each case records its time
as a multiple of two bounds built from them (``bench.measure.loss_bounds``).
Cases that cannot fit the device's free memory, or backends this machine
cannot run, are listed under ``not_run`` in the JSON with the reason instead
of crashing the run.  First calls are measured apart, in fresh processes
(``bench/first_call.py``).
"""

from __future__ import annotations

import functools
import time

import pytest
import torch

from snnl import optional, soft_nearest_neighbor_loss
from snnl.loss import registry

from .conftest import LOSS_SIZES
from .measure import PeakMemory, available_bytes, loss_bounds

TEMPERATURE = 0.5
# Live b x b fp32 temporaries of one eager reference step (forward + backward),
# measured on CPU at b = 4096: about 6.  Used to skip sizes that cannot fit.
REFERENCE_MATRICES = 7


def loss_with(backend: str):
    def loss(z, labels, t):
        return soft_nearest_neighbor_loss(z, labels, t, backend=backend, check_values=False)

    return loss


@functools.cache
def compiled_reference():
    return torch.compile(loss_with("reference"), dynamic=False)


BACKENDS = {"compiled": compiled_reference, **{name: functools.partial(loss_with, name) for name in registry.BACKENDS}}


def pytest_generate_tests(metafunc):
    if "batch" not in metafunc.fixturenames:
        return
    batches, dims = LOSS_SIZES[metafunc.config.getoption("--loss-sizes")]
    backends = [b.strip() for b in metafunc.config.getoption("--loss-backends").split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"--loss-backends: unknown {sorted(unknown)}; choose from {sorted(BACKENDS)}")
    metafunc.parametrize("dim", dims)
    metafunc.parametrize("batch", batches)
    metafunc.parametrize("backend", backends)


def test_loss_forward_backward(benchmark, device, not_run, cpu_rates, backend, batch, dim):
    params = {"backend": backend, "batch": batch, "dim": dim, "device": device.type}
    if backend == "triton" and (device.type != "cuda" or not optional.triton_available()):
        not_run("triton needs a CUDA device (the CPU interpreter is a test tool, not a performance path)", **params)
    if backend in ("reference", "compiled"):
        need = REFERENCE_MATRICES * batch * batch * 4
        have = available_bytes(device)
        if need > 0.8 * have:
            not_run(f"needs about {need / 2**30:.1f} GiB for b x b matrices; {have / 2**30:.1f} GiB free", **params)

    generator = torch.Generator().manual_seed(batch + dim)
    z = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    t = torch.tensor(TEMPERATURE, device=device)
    loss_fn = BACKENDS[backend]()

    def step():
        z.grad = None
        loss_fn(z, labels, t).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        step()  # warm-up: compilation, autotuning, allocator
        peak = PeakMemory(device)
        with peak.measure():
            step()
    except torch.OutOfMemoryError as error:
        not_run(f"out of memory: {str(error).splitlines()[0]}", **params)

    # Aim for ~2 s per case, at least 3 and at most 50 rounds.
    start = time.perf_counter()
    step()
    once = time.perf_counter() - start
    rounds = int(min(50, max(3, 2.0 / max(once, 1e-6))))
    benchmark.group = f"b={batch} d={dim}"
    benchmark.extra_info.update(params)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: a smoke run, nothing timed
        return
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["samples_per_s"] = batch / mean
    benchmark.extra_info["mean_ms"] = mean * 1e3
    benchmark.extra_info["peak_extra_bytes"] = peak.bytes
    if cpu_rates:
        for name, seconds in loss_bounds(batch, dim, cpu_rates).items():
            benchmark.extra_info[f"bound_{name}_ms"] = seconds * 1e3
            benchmark.extra_info[f"x_bound_{name}"] = mean / seconds
