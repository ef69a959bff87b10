"""Peak-memory measurement and run provenance for the benchmarks."""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager

import torch

from snnl.runs.provenance import device_name


def _proc_kib(field: str, path: str = "/proc/self/status") -> int:
    """A "Field:  123 kB" line of a /proc file, in KiB."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def pin_malloc_to_mmap() -> None:
    """Make glibc return large blocks to the OS at once (fixed 1 MiB mmap
    threshold), so that the resident set size tracks what is really in use and
    its high-water mark measures one step's peak."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


class PeakMemory:
    """Extra bytes at the peak of the block, over what was in use before it.

    CUDA: the caching allocator's peak statistics.  CPU (Linux): the process's
    resident-set high-water mark, reset through /proc/self/clear_refs.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None

    @contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - base
        else:
            libc = _libc()
            if libc is not None:
                libc.malloc_trim(0)
            base = _proc_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            yield self
            self.bytes = max(0, _proc_kib("VmHWM") - base) * 1024


def _median_seconds(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_rates() -> dict:
    """fp32 GEMM FLOP/s (a 2048 x 2048 x 2048 product, the best case) and
    exponentials per second (4M elements) with torch's threads: the two rates
    a CPU bound on the loss is built from."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2 * 2048**3 / _median_seconds(lambda: a @ b)
    x = torch.randn(4 << 20)
    out = torch.empty_like(x)
    exps = x.numel() / _median_seconds(lambda: torch.exp(x, out=out))
    return {
        "gemm_flops": gemm,
        "exp_per_s": exps,
        "threads": torch.get_num_threads(),
        "how": "median of 15: fp32 2048^3 matmul; torch.exp over 4M floats",
    }


def loss_bounds(batch: int, dim: int, rates: dict) -> dict:
    """Lower bounds in seconds for forward + backward of the loss on this CPU.

    ``naive``: three b x d x b products and 3.5 exps per ordered pair (the
    count of a row-block pass, forward and backward: logits, recomputed
    logits, gradient product; the yardstick of issue 12).  ``symmetric``:
    what the symmetric scheme must still do: two product equivalents (one
    forward, one recomputation, two gradient products, each over half the
    pairs) and one exp per ordered pair.
    """
    product = 2.0 * batch * batch * dim / rates["gemm_flops"]
    pair_exp = batch * batch / rates["exp_per_s"]
    return {"naive": 3 * product + 3.5 * pair_exp, "symmetric": 2 * product + pair_exp}


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _proc_kib("MemAvailable", "/proc/meminfo") * 1024


def command_line() -> str:
    """The command this process runs, as typed: ``python -m <module>`` for a module run with
    ``-m`` (a benchmark script, or pytest running a suite), else the script's path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    start = ["-m", spec.name.removesuffix(".__main__")] if spec is not None else [sys.argv[0]]
    return " ".join([os.path.basename(sys.executable), *start, *sys.argv[1:]])


def provenance(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": command_line(),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def write_new_json(path: str, data: dict) -> None:
    """Write a results file; never over an existing one (the scripts check
    before measuring, this guards the race)."""
    import json

    with open(path, "x") as f:
        json.dump(data, f, indent=1)
