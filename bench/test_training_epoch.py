"""One training epoch of the SNNL autoencoder (snnl-5), the loss written as
the plain formula against the library's, interleaved in one process.

- ``before``: the SNNL through the eager ``reference`` formula (b x b
  matrices, autograd) and torch's per-tensor Adam: how it is usually written;
- ``after``: ``backend="auto"`` (``blocked`` on a CPU) and fused Adam, as
  ``snnl.train.loop`` trains now.

(bench/results/training-epoch-cpu-epyc-2core.json predates this: its
``before`` was the since-removed ``chunked`` backend.)

Data: the paper's setting, 10,000 Fashion-MNIST training images (batch 256,
784-500-500-2000-70 network, SNNL over the seven hidden layers) when the
files are on the machine (Debian: ``apt-get install dataset-fashion-mnist``),
else 10,000 random 784-pixel images with ten labels (the same work per batch:
the loss's cost does not depend on the values, only the far-row fallback
would, and it never triggers at the annealed temperatures).

    python -m pytest bench/test_training_epoch.py --epoch-rounds 3 \
        --benchmark-json bench/results/training-epoch-cpu-<machine>.json

Each round trains one epoch of each configuration from the same starting
weights, alternating; ``extra_info`` holds the median epoch time of each and
the ratio.  The benchmark's own timing is of the pair.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from snnl.data import DatasetNotFoundError, labelled_subset, load_dataset
from snnl.train.config import preset
from snnl.train.loop import build_model, make_optimizer
from snnl.train.objective import batch_loss


def _data(rows: int):
    try:
        data = labelled_subset(load_dataset("fashion-mnist", "train"), rows, 0)
        return torch.from_numpy(data.x), torch.from_numpy(data.y), f"fashion-mnist ({rows:,} labelled training images)"
    except DatasetNotFoundError:
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.random((rows, 784), dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, 10, rows))
        return x, y, f"random 784-pixel images ({rows:,}), 10 labels (Fashion-MNIST not installed)"


CONFIGS = {
    "before": dict(loss_backend="reference", fused_adam=False),
    "after": dict(loss_backend="auto", fused_adam=True),
}


def _trainer(name: str, input_dim: int):
    options = CONFIGS[name]
    config = preset("snnl-5", loss_backend=options["loss_backend"])
    torch.manual_seed(0)
    model = build_model(input_dim, config)
    if options["fused_adam"]:
        optimizer = make_optimizer(model, config)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)
    return config, model, optimizer


def _epoch(trainer, x, y, epoch: int) -> float:
    config, model, optimizer = trainer
    temperature = config.temperature_schedule()(epoch)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    started = time.perf_counter()
    for start in range(0, len(x), config.batch_size):
        index = order[start : start + config.batch_size]
        loss, _, _ = batch_loss(model, x[index], y[index], temperature, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def test_training_epoch_before_and_after(benchmark, device, request):
    if device.type != "cpu":
        pytest.skip("the comparison is of the CPU path")
    x, y, source = _data(request.config.getoption("--epoch-rows"))
    rounds = request.config.getoption("--epoch-rounds")
    trainers = {name: _trainer(name, x.shape[1]) for name in CONFIGS}
    for trainer in trainers.values():  # warm-up: compilation, allocator
        _epoch(trainer, x[:2048], y[:2048], 0)
    times = {name: [] for name in CONFIGS}
    epoch = iter(range(1, 1000))

    def both():
        e = next(epoch)
        for name, trainer in trainers.items():
            times[name].append(_epoch(trainer, x, y, e))

    benchmark.group = "training epoch, snnl-5"
    benchmark.pedantic(both, rounds=rounds, warmup_rounds=0, iterations=1)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    benchmark.extra_info.update(
        {
            "data": source,
            "configs": CONFIGS,
            "before_s": times["before"],
            "after_s": times["after"],
            "median_before_s": before,
            "median_after_s": after,
            "speedup": before / after,
        }
    )
