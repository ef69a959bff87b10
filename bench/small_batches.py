"""The default CPU path against the plain formula at training-sized batches:
forward + backward, side by side in one process, interleaved.

    python -m bench.small_batches --json bench/results/small-batches-cpu-<machine>.json

Contenders, each forward + backward of the mean loss of a (b, d) batch with
10 classes at T = 0.5 (cosine):

- ``snnl``: ``soft_nearest_neighbor_loss`` with its defaults (``auto``: the
  CPU path; for a batch that fits one tile, its eager dense path);
- ``formula``: the textbook formula as a user writes it (``F.normalize``, one
  product, masked ``logsumexp`` twice, the authors' eps), eager;
- ``compiled``: ``torch.compile`` of that formula (compiled during warm-up).

For each size and load (0 or ``--busy`` other processes spinning on the
machine) the contenders run in turn over the rounds, so that they see the
same conditions; the JSON holds every time, the medians and each median as a
multiple of snnl's (above 1: snnl is faster).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from snnl import soft_nearest_neighbor_loss

from . import _cli
from .measure import provenance, write_new_json

BUSY = "while True: pass"
TEMPERATURE = 0.5
EPS = 1e-5


def formula(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The textbook soft nearest neighbor loss (cosine), as a user writes it."""
    unit = F.normalize(z, dim=1)
    logits = (unit @ unit.T - 1.0) / TEMPERATURE
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, -torch.inf)
    same = (labels[:, None] == labels[None, :]) & ~eye
    lse_all = torch.logsumexp(logits, dim=1)
    lse_same = torch.logsumexp(logits.masked_fill(~same, -torch.inf), dim=1)
    log_eps = torch.full_like(lse_all, EPS).log()
    return (-torch.logaddexp(log_eps, lse_same - torch.logaddexp(log_eps, lse_all))).mean()


def contenders() -> dict:
    return {
        "snnl": lambda z, y: soft_nearest_neighbor_loss(z, y, TEMPERATURE),
        "formula": formula,
        "compiled": torch.compile(formula, dynamic=False),
    }


def _time(fn, z, labels) -> float:
    zz = z.clone().requires_grad_(True)
    started = time.perf_counter()
    fn(zz, labels).backward()
    return time.perf_counter() - started


def measure(batches, dims, busy_loads, rounds: int, threads: int, progress=print) -> list[dict]:
    implementations = contenders()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for load in busy_loads:
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
            try:
                time.sleep(0.5 if load else 0.0)
                for dim in dims:
                    for batch in batches:
                        g = torch.Generator().manual_seed(batch * 7919 + dim)
                        z = torch.randn(batch, dim, generator=g)
                        labels = torch.randint(0, 10, (batch,), generator=g)
                        for fn in implementations.values():
                            _time(fn, z, labels)  # warm-up, and compilation
                            _time(fn, z, labels)
                        times: dict[str, list[float]] = {name: [] for name in implementations}
                        for _ in range(rounds):
                            for name, fn in implementations.items():
                                times[name].append(_time(fn, z, labels))
                        medians = {name: statistics.median(t) for name, t in times.items()}
                        rows.append(
                            {
                                "batch": batch,
                                "dim": dim,
                                "busy_processes": load,
                                "torch_threads": threads,
                                "seconds": times,
                                "median_s": medians,
                                "x_snnl": {name: m / medians["snnl"] for name, m in medians.items()},
                            }
                        )
                        progress(
                            f"b={batch:5d} d={dim:4d} busy={load}: "
                            + ", ".join(f"{name} {m * 1e3:.2f} ms" for name, m in medians.items())
                            + f"  (formula / snnl {rows[-1]['x_snnl']['formula']:.2f}x, "
                            f"compiled / snnl {rows[-1]['x_snnl']['compiled']:.2f}x)"
                        )
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    finally:
        torch.set_num_threads(previous)
    return rows


def main(argv=None) -> int:
    parser = _cli.parser("bench.small_batches", __doc__)
    parser.add_argument("--batches", default="64,128,256,512,1024,2048,4096")
    parser.add_argument("--dims", default="70,500,2000")
    parser.add_argument(
        "--busy", type=int, default=1, help="also measure with this many busy processes (0: quiet only)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = _cli.parse(parser, argv)
    rows = measure(
        [int(b) for b in args.batches.split(",")],
        [int(d) for d in args.dims.split(",")],
        sorted({0, args.busy}),
        args.rounds,
        args.threads,
        progress=lambda line: print(line, flush=True),
    )
    if args.json:
        write_new_json(
            args.json,
            {
                "rows": rows,
                "environment": provenance(torch.device("cpu")),
                "command": "python -m bench.small_batches " + " ".join(sys.argv[1:] if argv is None else argv),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
