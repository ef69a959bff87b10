"""The CPU path on a busy machine: the loss with 0, 1 and 2 other busy
processes on the machine, at 1 and 2 torch threads, side by side with the
plain formula eager and compiled.

    python -m bench.busy_machine --json bench/results/busy-machine-cpu-<machine>.json

A busy process is a Python loop that never sleeps (a data loader, a
browser, a CI neighbour).  For each load and thread count the three
implementations run forward + backward in turn, interleaved over the rounds
(so that they see the same conditions), warmed up first (``compiled`` has
compiled by then); the JSON holds every time and the medians, and each
implementation's median as a multiple of the blocked path's.  Users'
machines are rarely idle: the blocked path shares its tiles out to
single-threaded workers so that a descheduled thread holds up only its own
tile (``snnl.loss.workers``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import torch

from snnl import soft_nearest_neighbor_loss

from . import _cli
from .measure import provenance, write_new_json

BUSY = "while True: pass"


def _implementations():
    def loss(backend):
        return lambda z, y: soft_nearest_neighbor_loss(z, y, 0.5, backend=backend, check_values=False)

    return {"blocked": loss("blocked"), "formula": loss("reference"), "compiled": torch.compile(loss("reference"))}


def _time(fn, z, labels) -> float:
    zz = z.clone().requires_grad_(True)
    started = time.perf_counter()
    fn(zz, labels).backward()
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = _cli.parser("bench.busy_machine", __doc__)
    parser.add_argument("--sizes", default="1024,4096", help="batch sizes (d = 70)")
    parser.add_argument("--rounds", type=int, default=9)
    args = _cli.parse(parser, argv)
    implementations = _implementations()
    caller_threads = torch.get_num_threads()
    rows = []
    for batch in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(batch)
        z = torch.randn(batch, 70, generator=g)
        labels = torch.randint(0, 10, (batch,), generator=g)
        for load in (0, 1, 2):
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
            try:
                time.sleep(0.5)
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    for fn in implementations.values():
                        _time(fn, z, labels)  # warm-up (and compilation)
                    times = {name: [] for name in implementations}
                    for _ in range(args.rounds):
                        for name, fn in implementations.items():
                            times[name].append(_time(fn, z, labels))
                    medians = {name: statistics.median(t) for name, t in times.items()}
                    row = {
                        "batch": batch,
                        "dim": 70,
                        "busy_processes": load,
                        "torch_threads": threads,
                        "seconds": times,
                        "median_s": medians,
                        "x_blocked": {name: m / medians["blocked"] for name, m in medians.items()},
                    }
                    rows.append(row)
                    print(
                        f"b={batch:5d} busy={load} threads={threads}: "
                        + ", ".join(f"{name} {m * 1e3:.1f} ms" for name, m in medians.items()),
                        flush=True,
                    )
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    torch.set_num_threads(caller_threads)
    out = {
        "rows": rows,
        "environment": provenance(torch.device("cpu")),
        "command": "python -m bench.busy_machine " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if args.json:
        write_new_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
