"""The GPU acceptance run: what can only be checked on a CUDA device, in one
command, written to one JSON file.

    python -m bench.gpu_acceptance --json bench/results/gpu-acceptance-<gpu>.json

1. the GPU tests (``pytest -m gpu``: the compiled kernels against float64,
   determinism, CUDA-graph capture of a training step);
2. a training step (a small MLP, the fused loss, backward) compiled with
   ``torch.compile(fullgraph=True, mode="reduce-overhead")``: CUDA graphs,
   which a host synchronisation would break, replayed and compared with eager;
3. the loss, forward + backward, at the sizes the performance model was
   built for (b = 8,192, d = 128 and b = 131,072, d = 70; fp32, cosine,
   T = 0.5): the fused kernels, the eager reference and ``torch.compile`` of
   it where their b x b matrices fit, each printed next to the model's
   estimate (bench/results/kernels-model-*.json: a model, not a measurement);
4. the contrastive forms (``snnl.losses``' NT-Xent through two views and
   SupCon with labels, forward + backward, 4,096 and 8,192 samples x 2 views,
   d = 128): time and the CUDA allocator's extra peak, beside
   pytorch-metric-learning's where it is installed and fits (it is not on a
   machine without a package index: then only snnl's rows).

Meant to take under 8 minutes on an H100-class GPU.  It refuses to start
without a CUDA device and never overwrites a file.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from snnl import soft_nearest_neighbor_loss

from . import _cli
from .measure import available_bytes, provenance, write_new_json

RESULTS = Path(__file__).parent / "results"
MODELLED = [(8192, 128, "kernels-model-b8192-d128.json"), (131072, 70, "kernels-model-b131072-d70.json")]
REFERENCE_MATRICES = 7  # live b x b fp32 temporaries of one eager reference step


def run_gpu_tests() -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_loss_gpu.py"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    return {
        "returncode": done.returncode,
        "summary": tail,
        "seconds": time.perf_counter() - started,
        "output_tail": done.stdout[-4000:],
    }


def compiled_training_step(device: torch.device, steps: int = 20) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 70)).to(device)
    x = torch.randn(4096, 256, device=device)
    y = torch.randint(0, 10, (4096,), device=device)

    def step(x, y):
        loss = soft_nearest_neighbor_loss(model(x), y, 0.5, backend="triton")
        loss.backward()
        return loss.detach()

    eager = step(x, y)
    eager_grads = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
    times, losses = [], []
    for _ in range(steps):
        for p in model.parameters():
            p.grad = None
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        losses.append(compiled(x, y).clone())
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    grad_error = max(
        float((p.grad - g).abs().max() / g.abs().max().clamp_min(1e-30))
        for p, g in zip(model.parameters(), eager_grads)
    )
    return {
        "loss_eager": float(eager),
        "loss_compiled": [float(v) for v in losses],
        "max_loss_difference": max(abs(float(v) - float(eager)) for v in losses),
        "max_relative_grad_difference": grad_error,
        "first_call_s": times[0],
        "median_step_s": statistics.median(times[len(times) // 2 :]),
    }


def _median_time(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def loss_timings(device: torch.device) -> list[dict]:
    out = []
    for batch, dim, model_file in MODELLED:
        generator = torch.Generator().manual_seed(batch)
        z = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)
        labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
        reference = torch.compile(
            lambda z, y: soft_nearest_neighbor_loss(z, y, 0.5, backend="reference", check_values=False)
        )
        candidates = {
            "triton": lambda: soft_nearest_neighbor_loss(
                z, labels, 0.5, backend="triton", check_values=False
            ).backward()
        }
        if REFERENCE_MATRICES * batch * batch * 4 < 0.8 * available_bytes(device):
            candidates["reference"] = lambda: soft_nearest_neighbor_loss(
                z, labels, 0.5, backend="reference", check_values=False
            ).backward()
            candidates["compiled"] = lambda: reference(z, labels).backward()
        entry = {"batch": batch, "dim": dim, "measured_s": {}}
        for name, fn in candidates.items():
            entry["measured_s"][name] = _median_time(fn, device, 10 if batch <= 8192 else 3)
        path = RESULTS / model_file
        if path.is_file():
            model = json.loads(path.read_text())["model"]
            entry["model_s"] = {e["gpu"]["name"]: e["total_s"] for e in model}
        out.append(entry)
    return out


def contrastive_forms(device: torch.device, sizes=(4096, 8192)) -> list[dict]:
    from snnl import losses as ours

    from .measure import PeakMemory

    libraries = {"snnl": ours}
    try:
        from pytorch_metric_learning import losses as pml

        libraries["pml"] = pml
    except ImportError:
        pass
    out = []
    for samples in sizes:
        generator = torch.Generator().manual_seed(samples)
        a = torch.randn(samples, 128, generator=generator).to(device)
        b = torch.randn(samples, 128, generator=generator).to(device)
        labels = torch.randint(0, 10, (samples,), generator=generator).to(device)
        for loss in ("ntxent", "supcon"):
            entry = {"loss": loss, "samples": samples, "views": 2, "dim": 128}
            for name, library in libraries.items():
                if loss == "ntxent":
                    fn = library.SelfSupervisedLoss(library.NTXentLoss(temperature=0.07))
                    make = lambda x, y, fn=fn: fn(x, y)  # noqa: E731
                else:
                    fn = library.SupConLoss(temperature=0.1)
                    make = lambda x, y, fn=fn: fn(torch.cat([x, y]), torch.cat([labels, labels]))  # noqa: E731

                def step(make=make):
                    make(a.clone().requires_grad_(True), b.clone().requires_grad_(True)).backward()

                try:
                    step()
                    peak = PeakMemory(device)
                    with peak.measure():
                        step()
                    entry[name] = {"median_s": _median_time(step, device, 5), "extra_peak_bytes": peak.bytes}
                except torch.OutOfMemoryError as error:
                    entry[name] = {"error": f"out of memory: {str(error).splitlines()[0][:200]}"}
                    torch.cuda.empty_cache()
            out.append(entry)
    return out


def main(argv=None) -> int:
    parser = _cli.parser("bench.gpu_acceptance", __doc__, json_required=True)
    args = _cli.parse(parser, argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: the acceptance run is for a GPU machine")
    device = torch.device("cuda")
    started = time.perf_counter()
    out = {
        "gpu": torch.cuda.get_device_name(device),
        "environment": provenance(device),
        "command": "python -m bench.gpu_acceptance " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out["gpu_tests"] = run_gpu_tests()
    print(f"GPU tests: {out['gpu_tests']['summary']}", flush=True)
    out["compiled_training_step"] = compiled_training_step(device)
    step = out["compiled_training_step"]
    print(
        f"reduce-overhead training step: loss {step['loss_eager']:.6f} eager, max difference compiled "
        f"{step['max_loss_difference']:.2e}, gradients {step['max_relative_grad_difference']:.2e}; first call "
        f"{step['first_call_s']:.1f} s, then {step['median_step_s'] * 1e3:.2f} ms",
        flush=True,
    )
    out["loss"] = loss_timings(device)
    for entry in out["loss"]:
        measured = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in entry["measured_s"].items())
        modelled = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in entry.get("model_s", {}).items())
        print(f"b={entry['batch']:,} d={entry['dim']}: measured {measured}; MODEL {modelled}", flush=True)
    out["contrastive_forms"] = contrastive_forms(device)
    for entry in out["contrastive_forms"]:
        parts = [
            f"{name} {r['median_s'] * 1e3:.2f} ms, {r['extra_peak_bytes'] / 2**20:.0f} MiB"
            if "median_s" in r
            else f"{name}: {r['error'][:60]}"
            for name, r in entry.items()
            if isinstance(r, dict)
        ]
        print(f"{entry['loss']} {entry['samples']:,} x 2 views: " + "; ".join(parts), flush=True)
    out["seconds"] = time.perf_counter() - started
    write_new_json(args.json, out)
    print(f"wrote {args.json} ({out['seconds']:.0f} s)")
    return 0 if out["gpu_tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
