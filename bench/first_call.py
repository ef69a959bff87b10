"""What a user waits for on the first loss call: each variant in a fresh
process with empty compiler caches, side by side with the plain formula.

    python -m bench.first_call --json bench/results/first-call-cpu-<machine>.json

For every variant (distance, dtype, batch size and temperature: the one-tile
and multi-tile paths, and T = 0.01, where far rows take the exact pass) and
every implementation (``blocked``, the library's CPU path; ``formula``, the
eager b x b reference; ``compiled``, ``torch.compile`` of that formula), a
new Python process times its first forward + backward call and the median of
five calls after it.  ``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``
point at new empty directories for each process, so ``compiled`` pays its
compilation in full, as a user's first run does.  The processes run one at
a time, the implementations of a variant one after the other.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from . import _cli
from .measure import provenance, write_new_json

VARIANTS = [
    # (distance, dtype, batch, temperature)
    ("cosine", "float32", 256, 0.5),
    ("cosine", "float32", 4096, 0.5),
    ("euclidean", "float32", 4096, 0.5),
    ("cosine", "float64", 4096, 0.5),
    ("cosine", "float32", 4096, 0.01),  # far rows: the exact pass
]
IMPLEMENTATIONS = ("blocked", "formula", "compiled")

CHILD = """
import json, statistics, sys, time
import torch
from snnl import soft_nearest_neighbor_loss
distance, dtype, batch, temperature, implementation = sys.argv[1:6]
batch, temperature = int(batch), float(temperature)
g = torch.Generator().manual_seed(0)
z = torch.randn(batch, 70, generator=g, dtype=getattr(torch, dtype))
if distance == "euclidean":
    z = z / 70 ** 0.5
labels = torch.randint(0, 10, (batch,), generator=g)
backend = "blocked" if implementation == "blocked" else "reference"
def loss(z, labels):
    return soft_nearest_neighbor_loss(z, labels, temperature, distance=distance, backend=backend)
fn = torch.compile(loss) if implementation == "compiled" else loss
def call():
    zz = z.clone().requires_grad_(True)
    started = time.perf_counter()
    fn(zz, labels).backward()
    return time.perf_counter() - started
first = call()
print(json.dumps({"first_s": first, "then_s": statistics.median(call() for _ in range(5))}))
"""


def measure(distance: str, dtype: str, batch: int, temperature: float, implementation: str) -> dict:
    with tempfile.TemporaryDirectory() as inductor, tempfile.TemporaryDirectory() as triton:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor, "TRITON_CACHE_DIR": triton}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, distance, dtype, str(batch), str(temperature), implementation],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{implementation} {distance} {dtype} b={batch}: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["process_s"] = time.perf_counter() - started  # with torch's and snnl's imports
        return result


def main(argv=None) -> int:
    parser = _cli.parser("bench.first_call", __doc__)
    args = _cli.parse(parser, argv)
    rows = []
    for distance, dtype, batch, temperature in VARIANTS:
        row = {"distance": distance, "dtype": dtype, "batch": batch, "dim": 70, "temperature": temperature}
        for implementation in IMPLEMENTATIONS:
            row[implementation] = measure(distance, dtype, batch, temperature, implementation)
        row["blocked_first_over_formula_first"] = row["blocked"]["first_s"] / row["formula"]["first_s"]
        rows.append(row)
        print(
            f"{distance:9s} {dtype} b={batch:5d} T={temperature:<4}: "
            + ", ".join(
                f"{name} first {row[name]['first_s']:.2f} s then {row[name]['then_s'] * 1e3:.0f} ms"
                for name in IMPLEMENTATIONS
            ),
            flush=True,
        )
    out = {
        "rows": rows,
        "median_blocked_first_over_formula_first": statistics.median(
            r["blocked_first_over_formula_first"] for r in rows
        ),
        "environment": provenance(__import__("torch").device("cpu")),
        "command": "python -m bench.first_call " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if args.json:
        write_new_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
