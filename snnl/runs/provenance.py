"""Provenance: what produced a result (versions, commit, device, threads, command, time).

Every run writes ``environment()`` into its ``metrics.json``, and the
benchmarks into their JSON, so that a number can be traced to the code and
machine that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch

from .. import distributed


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def source_commit() -> str | None:
    """The git commit of the snnl source that is running, ``+dirty`` when its
    tracked files differ from it; None outside a git checkout (an installed
    wheel).  The version number alone does not say which code made a result."""
    root = Path(__file__).resolve().parents[2]  # snnl/runs/provenance.py -> the checkout holding snnl/
    if not (root / ".git").exists():  # (a directory, or a file in a git worktree)
        return None
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "snnl"], timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def thread_counts() -> dict:
    """The threads each numeric library may use: BLAS's sums (and numba's, in
    UMAP) can change with them, and UMAP's output with its inputs' last bits."""
    counts: dict[str, object] = {
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        from threadpoolctl import threadpool_info

        counts["native_threads"] = [f"{pool['internal_api']} {pool['num_threads']}" for pool in threadpool_info()]
    except Exception:  # threadpoolctl comes with scikit-learn; its probing is best effort
        pass
    if "numba" in sys.modules:  # imported by umap-learn
        counts["numba_threads"] = sys.modules["numba"].get_num_threads()
    return counts


def environment(device: torch.device) -> dict:
    from .. import __version__

    info = {
        "snnl": __version__,
        "snnl_commit": source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        **thread_counts(),
        "world_size": distributed.world_size(),
        "command": " ".join(
            ["snnl" if Path(sys.argv[0]).name in ("snnl", "cli.py") else Path(sys.argv[0]).name, *sys.argv[1:]]
        ),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module, key in (("faiss", "faiss"), ("umap", "umap-learn"), ("cuml", "cuml")):
        # UMAP's output, and N2D's accuracy with it, moves between versions
        try:
            info[key] = __import__(module).__version__
        except Exception:  # absent, or present but unusable (cuML without a GPU)
            pass
    return info
