"""How each pipeline stage grows with the number of points, on ``blobs``.

Stages: one training epoch of the SNNL autoencoder (snnl-5 with a small
network, 32 inputs, 10-d code: the cost per row does not depend on n),
encoding, k-means (10 clusters), the exact silhouette and its sampled
estimate, and UMAP fitted on all points or on a sample and then applied to
all.  Each case records the wall time, the time per million points and the
extra peak memory (resident set on the CPU, allocator peak on CUDA).

    python -m pytest bench/test_scaling.py --scaling-sizes cpu --benchmark-json bench/results/scaling-<device>.json

Training, encoding and k-means cost O(n); the exact silhouette is O(n^2)
and UMAP's fit grows faster than linearly, so past the limits below those
cases are listed under ``not_run`` with the reason, and the sampled
alternatives (silhouette on 10,000 points, UMAP fitted on 20,000) are
measured instead.
"""

from __future__ import annotations

import time

import pytest

from snnl.autoencoder import encode_in_batches
from snnl.cluster.kmeans import kmeans
from snnl.cluster.manifold import ManifoldConfig, embed
from snnl.data import load_dataset
from snnl.metrics import silhouette
from snnl.optional import umap_learn_status
from snnl.train.config import preset
from snnl.train.loop import train_autoencoder

from .conftest import SCALING_SIZES
from .measure import PeakMemory

EXACT_SILHOUETTE_MAX = 100_000
UMAP_FULL_MAX = 100_000
SILHOUETTE_SAMPLE = 10_000
UMAP_FIT_SAMPLE = 20_000
MODEL = dict(hidden=(64, 64, 128), code_dim=10, epochs=1, batch_size=256)

_STATE: dict[int, dict] = {}  # per n: data, then the model and codes of the training stage


def pytest_generate_tests(metafunc):
    if "n" in metafunc.fixturenames:
        metafunc.parametrize("n", SCALING_SIZES[metafunc.config.getoption("--scaling-sizes")])


def _data(n: int) -> dict:
    if n not in _STATE:
        # blobs' training split is 3/4 of n_samples
        data = load_dataset("blobs", "train", n_samples=n * 4 // 3 + 1, n_features=32, centers=10, seed=0)
        _STATE[n] = {"x": data.x[:n], "y": data.y[:n]}
    return _STATE[n]


def _measure(benchmark, device, n, stage, fn, **info):
    peak = PeakMemory(device)
    result = {}

    def run():
        with peak.measure():
            result["value"] = fn()

    started = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    seconds = time.perf_counter() - started
    benchmark.group = stage
    benchmark.extra_info.update(
        stage=stage,
        n=n,
        seconds=seconds,
        seconds_per_million=seconds / n * 1e6,
        peak_extra_bytes=peak.bytes,
        device=device.type,
        **info,
    )
    return result["value"]


def test_training_epoch(benchmark, device, n):
    state = _data(n)
    config = preset("snnl-5", **MODEL)
    result = _measure(
        benchmark,
        device,
        n,
        "training epoch",
        lambda: train_autoencoder(state["x"], state["y"], config, seed=0, device=device, progress=False),
    )
    state["model"] = result.model


def test_encoding(benchmark, device, n):
    state = _data(n)
    if "model" not in state:
        pytest.skip("needs the model of test_training_epoch")
    state["codes"] = _measure(
        benchmark, device, n, "encoding", lambda: encode_in_batches(state["model"], state["x"], device=device).numpy()
    )


def _codes(n):
    state = _data(n)
    if "codes" not in state:
        pytest.skip("needs the codes of test_encoding")
    return state


def test_kmeans(benchmark, device, n):
    state = _codes(n)
    result = _measure(
        benchmark,
        device,
        n,
        "k-means",
        lambda: kmeans(state["codes"], 10, n_init=1, max_iter=20, seed=0, device=device),
    )
    benchmark.extra_info["backend"] = result.backend
    state["clusters"] = result.labels


def test_silhouette_exact(benchmark, device, not_run, n):
    state = _codes(n)
    if n > EXACT_SILHOUETTE_MAX:
        hours = 60.0 * (n / EXACT_SILHOUETTE_MAX) ** 2 / 3600  # ~1 minute at the limit on 2 CPU cores
        not_run(
            f"exact silhouette is O(n^2): ~{hours:.0f} h at this n on a 2-core CPU; "
            f"the sampled estimate is measured instead",
            stage="silhouette exact",
            n=n,
        )
    _measure(
        benchmark, device, n, "silhouette exact", lambda: silhouette(state["codes"], state["clusters"], device=device)
    )


def test_silhouette_sampled(benchmark, device, n):
    state = _codes(n)
    _measure(
        benchmark,
        device,
        n,
        "silhouette sampled",
        lambda: silhouette(state["codes"], state["clusters"], device=device, sample_size=SILHOUETTE_SAMPLE),
        sample=SILHOUETTE_SAMPLE,
    )


def test_umap_full(benchmark, device, not_run, n):
    if not umap_learn_status()[0]:
        not_run("umap-learn is not installed", stage="umap full", n=n)
    if n > UMAP_FULL_MAX:
        not_run(
            f"UMAP's fit grows faster than linearly; past {UMAP_FULL_MAX} points it is fitted on a sample",
            stage="umap full",
            n=n,
        )
    state = _codes(n)
    _measure(benchmark, device, n, "umap full", lambda: embed(state["codes"], 10, ManifoldConfig(), seed=0))


def test_umap_fit_on_sample(benchmark, device, not_run, n):
    if not umap_learn_status()[0]:
        not_run("umap-learn is not installed", stage="umap sample", n=n)
    state = _codes(n)
    config = ManifoldConfig(fit_sample=UMAP_FIT_SAMPLE)
    _measure(
        benchmark,
        device,
        n,
        "umap fit on sample + transform",
        lambda: embed(state["codes"], 10, config, seed=0),
        sample=UMAP_FIT_SAMPLE,
    )


def teardown_module():
    _STATE.clear()
