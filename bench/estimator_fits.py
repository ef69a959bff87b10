"""How long the README's estimator snippets take on scikit-learn's digits,
with their defaults as shipped (what a newcomer pays on a first try).

    python -m bench.estimator_fits --json bench/results/estimator-fits-<device>.json

Each fit once, in this order: ``SNNLKMeans(config="snnl-5")`` (the preset's
50 epochs, with the labels), ``N2D(n_clusters=10, epochs=50)`` and
``N2D(n_clusters=10)`` (the paper's 1000 epochs); wall time of
``fit_predict`` and the six metrics of its clusters against the true labels
(SIL, CHS and DBI on the inputs, so that the three fits compare).
Progress lines go to stderr as a user sees them.
"""

from __future__ import annotations

import sys
import time

import torch
from sklearn.datasets import load_digits

from snnl import SNNLKMeans
from snnl.estimators import N2D
from snnl.metrics import evaluate

from . import _cli
from .measure import provenance, write_new_json

FITS = {
    "SNNLKMeans(config='snnl-5', random_state=0).fit_predict(X, y)": (
        lambda: SNNLKMeans(config="snnl-5", random_state=0),
        True,
    ),
    "N2D(n_clusters=10, epochs=50, random_state=0).fit_predict(X)": (
        lambda: N2D(n_clusters=10, epochs=50, random_state=0),
        False,
    ),
    "N2D(n_clusters=10, random_state=0).fit_predict(X)": (lambda: N2D(n_clusters=10, random_state=0), False),
}


def main(argv=None) -> int:
    parser = _cli.parser("bench.estimator_fits", __doc__)
    args = _cli.parse(parser, argv)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    fits = {}
    for name, (make, with_labels) in FITS.items():
        started = time.perf_counter()
        clusters = make().fit_predict(X, y) if with_labels else make().fit_predict(X)
        seconds = time.perf_counter() - started
        fits[name] = {"seconds": seconds, "metrics": evaluate(X, y, clusters)}
        print(f"{name}: {seconds:.1f} s, ACC {fits[name]['metrics']['acc']:.3f}", file=sys.stderr, flush=True)
    if args.json:
        write_new_json(
            args.json,
            {"data": "sklearn digits, 1797 x 64, X / 16", "fits": fits, "environment": provenance(torch.device("cpu"))},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
