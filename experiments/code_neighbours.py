"""How much class information a run's codes hold where they lie: for every
test code, whether the commonest label among its k nearest other test codes
is its own (k-NN agreement), over all codes and per class.  The labels only
measure; nothing is trained or fitted.

    python -m experiments.code_neighbours results/fashion-mnist/{baseline-ae,labels/snnl-5-1000} \
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

from snnl.train.positives import nearest_neighbours


def neighbour_agreement(codes: np.ndarray, labels: np.ndarray, k: int = 10) -> tuple[float, np.ndarray]:
    """(the share of codes whose k nearest others' commonest label is their
    own, that share per class 0 .. labels.max())."""
    y = np.asarray(labels)
    n_classes = int(y.max()) + 1
    nearest = nearest_neighbours(codes, k, metric="euclidean")
    votes = np.array([np.bincount(row, minlength=n_classes).argmax() for row in y[nearest]])
    agree = votes == y
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
