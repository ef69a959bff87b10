"""Options and JSON additions for the pytest-benchmark suites in bench/."""

from __future__ import annotations

import pytest
import torch

from .measure import machine_rates, pin_malloc_to_mmap, provenance

LOSS_SIZES = {
    # batch sizes x latent dimensions
    "smoke": ([256, 1024], [16, 70]),
    # the SNNL autoencoder's widths: the 70-d code, 128, and the hidden layers (500, 2000)
    "cpu": ([256, 1024, 4096, 16384], [70, 128, 500, 2000]),
    "full": ([256, 1024, 4096, 16384, 65536, 131072], [16, 70, 128, 512]),
}

SCALING_SIZES = {
    "smoke": [1_000, 2_000],  # a smoke run only checks that every stage runs
    "cpu": [10_000, 100_000, 1_000_000, 3_000_000],
    "gpu": [10_000, 100_000, 1_000_000, 3_000_000, 10_000_000],
}

NOT_RUN: list[dict] = []


def pytest_addoption(parser):
    group = parser.getgroup("snnl benchmarks")
    group.addoption("--loss-sizes", default="smoke", choices=sorted(LOSS_SIZES), help="size grid of the loss benchmark")
    group.addoption(
        "--loss-backends",
        default="reference,compiled,blocked,triton",
        help="comma-separated subset of reference,compiled,blocked,triton",
    )
    group.addoption(
        "--scaling-sizes",
        default="smoke",
        choices=sorted(SCALING_SIZES),
        help="numbers of points of the scaling benchmark",
    )
    group.addoption("--device", default=None, help="cuda or cpu (default: cuda when available)")
    group.addoption("--epoch-rounds", type=int, default=1, help="rounds of the training-epoch comparison")
    group.addoption(
        "--epoch-rows",
        type=int,
        default=10_000,
        help="training images per epoch in the training-epoch comparison (the paper's 10,000)",
    )


def pytest_configure(config):
    pin_malloc_to_mmap()


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    name = pytestconfig.getoption("--device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@pytest.fixture
def not_run(request):
    """Record a case that was not measured (and why) in the JSON, then skip it."""

    def record(reason: str, **params):
        NOT_RUN.append({"name": request.node.name, "params": params, "reason": reason})
        pytest.skip(reason)

    return record


MACHINE: dict = {}  # the CPU's measured GEMM and exp rates, when a loss case ran on the CPU


def pytest_benchmark_update_json(config, benchmarks, output_json):
    device = torch.device(config.getoption("--device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    output_json["snnl"] = provenance(device)
    output_json["not_run"] = list(NOT_RUN)
    if MACHINE:
        output_json["snnl"]["machine"] = dict(MACHINE)


@pytest.fixture(scope="session")
def cpu_rates(device) -> dict:
    """The machine's fp32 GEMM FLOP/s and exp/s, measured once per run (so the
    bound that each case is compared with comes from the same conditions)."""
    if device.type != "cpu" or MACHINE:
        return MACHINE
    MACHINE.update(machine_rates())
    return MACHINE
