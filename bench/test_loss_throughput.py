"""Soft nearest neighbor loss, forward + backward, side by side in one run.

Backends: the eager b x b reference, ``torch.compile`` of that reference, the
chunked PyTorch path (row blocks against the batch), the blocked CPU path
(symmetric block pairs, compiled tiles) and the fused Triton kernels.  All are
called without the public function's input validation, so only the
computation is timed; the cosine distance, fp32, mean reduction and T = 0.5.

    python -m pytest bench/test_loss_throughput.py --loss-sizes smoke
    python -m pytest bench/test_loss_throughput.py --loss-sizes cpu --benchmark-json bench/results/loss-cpu-<machine>.json
    python -m pytest bench/test_loss_throughput.py --loss-sizes full --benchmark-json bench/results/loss-<device>.json

Each case records samples/s, the mean time and the extra peak memory of one
step in ``extra_info``.  On the CPU the run also measures the machine's GEMM
and exp rates (``snnl.machine`` in the JSON) and each case records its time
as a multiple of two bounds built from them (``bench.measure.loss_bounds``).
Cases that cannot fit the device's free memory, or backends this machine
cannot run, are listed under ``not_run`` in the JSON with the reason instead
of crashing the run.
"""

from __future__ import annotations

import functools
import time

import pytest
import torch
import torch.nn.functional as F

from snnl.loss.blocked import blocked_rows
from snnl.loss.chunked import chunked_rows
from snnl.loss.reference import reference_rows
from snnl.loss.rowwise import reduce_rows
from snnl.loss.validation import triton_available

from .conftest import LOSS_SIZES
from .measure import PeakMemory, available_bytes, loss_bounds

TEMPERATURE = 0.5
EPS = 1e-5
# Live b x b fp32 temporaries of one eager reference step (forward + backward),
# measured on CPU at b = 4096: about 6.  Used to skip sizes that cannot fit.
REFERENCE_MATRICES = 7


def reference_loss(z, labels, t):
    return reduce_rows(reference_rows(z, labels, t, "cosine", EPS), "mean")


@functools.cache
def compiled_reference():
    return torch.compile(reference_loss, dynamic=False)


def chunked_loss(z, labels, t):
    return reduce_rows(chunked_rows(F.normalize(z, dim=1), labels, t, True, EPS), "mean")


def blocked_loss(z, labels, t):
    return reduce_rows(blocked_rows(z, labels, t, False, EPS), "mean")  # normalises z itself


def triton_loss(z, labels, t):
    from snnl.loss.fused import fused_rows

    return reduce_rows(fused_rows(z, labels, t, True, EPS), "mean")  # the kernels normalise z themselves


BACKENDS = {
    "reference": lambda: reference_loss,
    "compiled": compiled_reference,
    "chunked": lambda: chunked_loss,
    "blocked": lambda: blocked_loss,
    "triton": lambda: triton_loss,
}


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
    if backend == "triton" and (device.type != "cuda" or not triton_available()):
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
