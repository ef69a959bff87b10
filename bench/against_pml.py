"""snnl.losses against pytorch-metric-learning's losses: time and extra memory.

    python -m bench.against_pml --json bench/results/against-pml-cpu-<machine>.json

For each loss and batch size, one fresh process (so that one side's
allocations do not hide the other's) builds a batch of ``b`` samples x 2
views (d = 128, fp32), and for snnl's class and pytorch-metric-learning's in
turn runs forward + backward once (warm-up), then once more measuring the
extra peak memory (``measure.PeakMemory``: the resident-set high-water mark
on a CPU), then alternates the two over ``--rounds`` for the times (median).
The losses: NT-Xent through ``SelfSupervisedLoss`` (two views, each the
other's positive), NT-Xent, SupCon and (``--losses nca``) NCA with labels
over 10 classes (both views labelled: each row has about b / 5 positives).
The process is limited to ``--memory-limit-gib`` of address space, so that
a side that asks for more fails with an error, recorded as such, instead of
taking the machine down.  ``--time-only`` leaves the memory out and the
allocator as it is (measuring the peak maps every allocation on its own,
which slows small sizes for both libraries).
"""

from __future__ import annotations

import json
import subprocess
import sys

from . import _cli
from .measure import provenance

DIM = 128
CHILD = r"""
import contextlib, json, resource, statistics, sys, time
limit = int(float(sys.argv[4]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
from pytorch_metric_learning import losses as pml
from snnl import losses as ours
from bench.measure import PeakMemory, pin_malloc_to_mmap
memory = sys.argv[7] == "memory"
if memory:  # every allocation its own mapping, so that the peak is seen (each one slower, for both)
    pin_malloc_to_mmap()
torch.set_num_threads(int(sys.argv[5]))
loss, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(batch)
dim = int(sys.argv[6])
a, b = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
labels = torch.randint(0, 10, (batch,), generator=g)
def make(library):
    if loss == "ntxent":
        fn = library.SelfSupervisedLoss(library.NTXentLoss(temperature=0.07))
        return lambda x, y: fn(x, y)
    if loss == "ntxent-labels":
        fn = library.NTXentLoss(temperature=0.07)
        return lambda x, y: fn(torch.cat([x, y]), torch.cat([labels, labels]))
    if loss == "nca":
        fn = library.NCALoss(softmax_scale=1)
        return lambda x, y: fn(torch.cat([x, y]), torch.cat([labels, labels]))
    fn = library.SupConLoss(temperature=0.1)
    return lambda x, y: fn(torch.cat([x, y]), torch.cat([labels, labels]))
def step(fn):
    x, y = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    value = fn(x, y)
    value.backward()
    return float(value)
out = {}
fns = {"snnl": make(ours), "pml": make(pml)}
for name, fn in list(fns.items()):
    try:
        step(fn)
        peak = PeakMemory(torch.device("cpu"))
        with peak.measure() if memory else contextlib.nullcontext():
            value = step(fn)
        out[name] = {"value": value, "extra_peak_bytes": peak.bytes if memory else None, "seconds": []}
    except (RuntimeError, MemoryError) as error:
        out[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
        del fns[name]
for _ in range(rounds):
    for name, fn in fns.items():
        started = time.perf_counter()
        step(fn)
        out[name]["seconds"].append(time.perf_counter() - started)
for name in fns:
    out[name]["median_s"] = statistics.median(out[name]["seconds"])
print(json.dumps(out))
"""


def measure_one(loss: str, batch: int, rounds: int, limit_gib: float, threads: int, memory: bool = True) -> dict:
    mode = "memory" if memory else "time"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, loss, str(batch), str(rounds), str(limit_gib), str(threads), str(DIM), mode],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"error": f"the measuring process failed ({done.returncode}): {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = _cli.parser("bench.against_pml", __doc__)
    parser.add_argument("--losses", default="ntxent,ntxent-labels,supcon", help="of ntxent, ntxent-labels, supcon, nca")
    parser.add_argument("--batches", default="128,256,512,1024,2048,4096,8192", help="samples (x 2 views)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-limit-gib", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--time-only",
        action="store_true",
        help="no memory measurement: the allocator as it is (measuring the peak makes every "
        "allocation a mapping of its own, which slows small sizes for both libraries)",
    )
    args = _cli.parse(parser, argv)
    import torch

    rows = []
    for loss in args.losses.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rounds = args.rounds if batch <= 2048 else max(1, args.rounds // 2)
            result = measure_one(loss, batch, rounds, args.memory_limit_gib, args.threads, not args.time_only)
            rows.append({"loss": loss, "samples": batch, "views": 2, "dim": DIM, **result})
            parts = []
            for name in ("snnl", "pml"):
                r = result.get(name, result)
                if "median_s" in r:
                    peak = r["extra_peak_bytes"]
                    parts.append(f"{name} {r['median_s'] * 1e3:.1f} ms" + (f", {peak / 2**20:.0f} MiB" if peak else ""))
                else:
                    parts.append(f"{name}: {r.get('error', '?')[:80]}")
            print(f"{loss} b={batch}: " + "; ".join(parts), flush=True)
    _cli.write(
        args,
        {
            "rows": rows,
            "environment": provenance(torch.device("cpu")),
            "command": " ".join(["python -m bench.against_pml", *(argv or sys.argv[1:])]),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
