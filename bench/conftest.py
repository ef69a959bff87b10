"""Options and JSON additions for the pytest-benchmark suites in bench/."""

from __future__ import annotations

import pytest
import torch

from .measure import pin_malloc_to_mmap, provenance

LOSS_SIZES = {
    # batch sizes x latent dimensions
    "smoke": ([256, 1024], [16, 70]),
    "cpu": ([256, 1024, 4096, 16384], [16, 70, 128]),
    "full": ([256, 1024, 4096, 16384, 65536, 131072], [16, 70, 128, 512]),
}

SCALING_SIZES = {
    "smoke": [1_000, 3_000],
    "cpu": [10_000, 100_000, 1_000_000, 3_000_000],
    "gpu": [10_000, 100_000, 1_000_000, 3_000_000, 10_000_000],
}

NOT_RUN: list[dict] = []


def pytest_addoption(parser):
    group = parser.getgroup("snnl benchmarks")
    group.addoption("--loss-sizes", default="smoke", choices=sorted(LOSS_SIZES), help="size grid of the loss benchmark")
    group.addoption(
        "--loss-backends", default="reference,compiled,chunked,triton",
        help="comma-separated subset of reference,compiled,chunked,triton",
    )
    group.addoption("--scaling-sizes", default="smoke", choices=sorted(SCALING_SIZES),
                    help="numbers of points of the scaling benchmark")
    group.addoption("--device", default=None, help="cuda or cpu (default: cuda when available)")


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


def pytest_benchmark_update_json(config, benchmarks, output_json):
    device = torch.device(config.getoption("--device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    output_json["snnl"] = provenance(device)
    output_json["not_run"] = list(NOT_RUN)
