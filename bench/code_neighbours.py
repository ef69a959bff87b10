"""How much class information a run's codes hold where they lie: for every
test code, whether the commonest label among its k nearest other test codes
is its own (k-NN agreement), over all codes and per class.  The labels only
measure; nothing is trained or fitted.

    python -m bench.code_neighbours results/fashion-mnist/{baseline-ae,labels/snnl-5-1000} \
        results/fashion-mnist/snnl-umap-neighbour-views-clusters{,-seed1}

Each run's ``embeddings.npz`` (the first seed's test codes) is read; the
distance is Euclidean on the codes as stored, which ranks unit-length codes
(the label-free presets') as the cosine does.  A k-means ACC far below this
agreement means the classes are there locally but not as k compact groups.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

ROWS_AT_A_TIME = 2048  # distance rows per step: 2,048 x 10,000 floats, 80 MB


def neighbour_agreement(codes: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """(the share of codes whose k nearest others' commonest label is their
    own, that share per class 0 .. labels.max())."""
    z = torch.as_tensor(codes, dtype=torch.float32)
    y = np.asarray(labels)
    n_classes = int(y.max()) + 1
    agree = np.empty(len(y), dtype=bool)
    for start in range(0, len(y), ROWS_AT_A_TIME):
        rows = slice(start, min(start + ROWS_AT_A_TIME, len(y)))
        distance = torch.cdist(z[rows], z)
        distance[torch.arange(distance.shape[0]), torch.arange(rows.start, rows.stop)] = float("inf")  # not itself
        nearest = distance.topk(k, largest=False).indices.numpy()
        votes = np.array([np.bincount(y[r], minlength=n_classes).argmax() for r in nearest])
        agree[rows] = votes == y[rows]
    return float(agree.mean()), np.array([agree[y == c].mean() for c in range(n_classes)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (snnl run --out)")
    parser.add_argument("-k", type=int, default=10, help="neighbours per code (default 10)")
    args = parser.parse_args(argv)
    for run in args.runs:
        stored = np.load(run / "embeddings.npz")
        overall, per_class = neighbour_agreement(stored["z"], stored["y"], args.k)
        print(f"{run}: {args.k}-NN agreement {overall:.3f}; per class " + " ".join(f"{v:.2f}" for v in per_class))


if __name__ == "__main__":
    main()
