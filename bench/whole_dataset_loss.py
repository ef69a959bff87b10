"""The SNNL and its gradient over a whole dataset in one call, on the CPU:
all 70,000 Fashion-MNIST images (train + test) as 70-d points, one batch.

    python -m bench.whole_dataset_loss --json bench/results/whole-dataset-loss-cpu-epyc-2core.json

The points are the `original` preset's representation (PCA to 70 dimensions
of the [0, 1] pixels) with the true labels; cosine distance, T = 0.5, fp32,
``backend="auto"`` (``blocked`` on a CPU).  The eager reference would hold
several 70,000 x 70,000 matrices (about 20 GB each in fp32) and is not run.
Reported: the time of each forward + backward call after a warm-up call on
a small batch (the worker threads start), the extra peak memory of the call
(resident-set high-water mark) and the machine's bound for it from its own
GEMM and exp rates measured in the same run (``bench.measure``).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from sklearn.decomposition import PCA

from snnl import soft_nearest_neighbor_loss
from snnl.data import train_and_test

from . import _cli
from .measure import PeakMemory, loss_bounds, machine_rates, pin_malloc_to_mmap, provenance, write_new_json


def main(argv=None) -> int:
    parser = _cli.parser("bench.whole_dataset_loss", __doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = _cli.parse(parser, argv)
    pin_malloc_to_mmap()
    data = train_and_test("fashion-mnist")
    points = PCA(n_components=70, random_state=0).fit_transform(data.x).astype(np.float32)
    z = torch.from_numpy(points)
    labels = torch.from_numpy(np.asarray(data.y, dtype=np.int64))
    rates = machine_rates()

    def step(x, y):
        x = x.clone().requires_grad_(True)
        loss = soft_nearest_neighbor_loss(x, y, 0.5)
        loss.backward()
        return float(loss.detach()), x.grad

    step(z[:4096], labels[:4096])  # warm-up: the worker threads, the allocator
    times, peaks = [], []
    for _ in range(args.rounds):
        memory = PeakMemory(torch.device("cpu"))
        started = time.perf_counter()
        with memory.measure():
            loss, grad = step(z, labels)
        times.append(time.perf_counter() - started)
        peaks.append(memory.bytes)
        assert torch.isfinite(grad).all()
        print(f"b={len(z)}: loss {loss:.6f}, {times[-1]:.1f} s, extra peak {memory.bytes / 2**20:.0f} MiB", flush=True)
    bounds = loss_bounds(len(z), z.shape[1], rates)
    out = {
        "points": len(z),
        "dim": z.shape[1],
        "temperature": 0.5,
        "distance": "cosine",
        "loss": loss,
        "seconds": times,
        "median_s": statistics.median(times),
        "peak_extra_bytes": peaks,
        "gradient_bytes": grad.numel() * 4,
        "reference_matrix_bytes": len(z) ** 2 * 4,
        "machine": {**rates, **{k: v for k, v in provenance(torch.device("cpu")).items() if k != "command"}},
        "bound_naive_s": bounds["naive"],
        "bound_symmetric_s": bounds["symmetric"],
        "x_bound_naive": statistics.median(times) / bounds["naive"],
        "command": "python -m bench.whole_dataset_loss " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"median {out['median_s']:.1f} s = {out['x_bound_naive']:.2f}x the naive bound "
        f"({bounds['naive']:.1f} s); extra peak {max(peaks) / 2**20:.0f} MiB"
    )
    if args.json:
        write_new_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
