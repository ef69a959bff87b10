"""scikit-learn's k-means against faiss' on the CPU, side by side, to place
``kmeans_backend="auto"``'s crossover.

    python -m bench.kmeans_crossover --codes results/fashion-mnist/snnl-5/embeddings.npz \
        --json bench/results/kmeans-crossover-cpu-epyc-2core.json

The points are real 70-d SNNL codes (10,000 Fashion-MNIST test images); for
more points than that, copies of them with small Gaussian noise (0.01 of
the codes' spread), which keeps the cluster structure.  The pipeline's
protocol: 10 restarts, at most 300 iterations (scikit-learn stops when its
centres settle, faiss always runs every iteration).  Each size runs both
backends in turn, ``--rounds`` times, and reports the median time and the
inertia each reached.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch

from snnl.cluster.kmeans import kmeans
from snnl.runs.provenance import device_name

from . import _cli
from .measure import write_new_json

SIZES = [1_000, 3_000, 10_000, 30_000, 70_000, 200_000]


def points(codes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= len(codes):
        return codes[rng.choice(len(codes), n, replace=False)]
    picked = codes[rng.integers(0, len(codes), n)]
    return (picked + 0.01 * codes.std() * rng.standard_normal(picked.shape)).astype(np.float32)


def main(argv=None) -> int:
    parser = _cli.parser("bench.kmeans_crossover", __doc__)
    parser.add_argument("--codes", required=True, help="an embeddings.npz of a run (its 'z' array)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=3)
    args = _cli.parse(parser, argv)
    codes = np.load(args.codes)["z"].astype(np.float32)
    rng = np.random.default_rng(0)
    rows = []
    for n in map(int, args.sizes.split(",")):
        x = points(codes, n, rng)
        times = {"sklearn": [], "faiss": []}
        inertia = {}
        for _ in range(args.rounds):
            for backend in times:  # interleaved: the machine's drift hits both alike
                started = time.perf_counter()
                result = kmeans(x, 10, backend=backend, n_init=10, max_iter=300, seed=0)
                times[backend].append(time.perf_counter() - started)
                inertia[backend] = float(result.inertia)
        row = {
            "n": n,
            "dim": x.shape[1],
            **{f"{b}_median_s": statistics.median(t) for b, t in times.items()},
            **{f"{b}_s": t for b, t in times.items()},
            **{f"{b}_inertia": v for b, v in inertia.items()},
        }
        row["faiss_over_sklearn"] = row["faiss_median_s"] / row["sklearn_median_s"]
        rows.append(row)
        print(
            f"n={n:>7}: sklearn {row['sklearn_median_s']:.3f} s (inertia {inertia['sklearn']:.4g}), "
            f"faiss {row['faiss_median_s']:.3f} s (inertia {inertia['faiss']:.4g}); "
            f"faiss/sklearn time {row['faiss_over_sklearn']:.2f}",
            flush=True,
        )
    out = {
        "machine": {
            "device": device_name(torch.device("cpu")),
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
        },
        "command": "python -m bench.kmeans_crossover " + " ".join(argv or __import__("sys").argv[1:]),
        "rows": rows,
    }
    if args.json:
        write_new_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
