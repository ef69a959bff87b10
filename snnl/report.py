"""What a run leaves behind, and the tables made from it.

An output directory holds:

    metrics.json      configuration, per-seed metrics and stage times, mean /
                      std / best, versions, device, wall time
    embeddings.npz    z (the points clustered for the first seed: test codes,
                      or N2D's manifold embedding), y (true labels), clusters
                      (the assignment); N2D adds codes (autoencoder codes)
    seeds/seedN.json  each finished seed (what --resume reads back)
    checkpoints/      seedN.pt: the last epoch's model, optimizer and RNG state
    figures/          training curves, 2-D projections, confusion matrix (PNG)

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
import torch

from . import distributed
from .metrics import METRICS

METRIC_TITLES = {"acc": "ACC", "nmi": "NMI", "ari": "ARI", "sil": "SIL", "chs": "CHS", "dbi": "DBI"}


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def environment(device: torch.device) -> dict:
    from . import __version__

    info = {
        "snnl": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": distributed.world_size(),
        "command": " ".join(["snnl" if Path(sys.argv[0]).name in ("snnl", "cli.py") else Path(sys.argv[0]).name, *sys.argv[1:]]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module, key in (("faiss", "faiss"), ("umap", "umap-learn"), ("cuml", "cuml")):
        # UMAP's output, and N2D's accuracy with it, moves between versions
        try:
            info[key] = __import__(module).__version__
        except Exception:  # absent, or present but unusable (cuML without a GPU)
            pass
    return info


def check_output_dir(out_dir: Path, config, resume: bool) -> None:
    """Refuse to overwrite a finished run unless resuming it with the same configuration."""
    config_path = out_dir / "config.json"
    if config_path.is_file():
        previous = json.loads(config_path.read_text())
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        if previous != config.to_dict():
            raise ValueError(f"{out_dir} holds a run with a different configuration; --resume needs the same options")


def write_config(out_dir: Path, config) -> None:
    _atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2))


def write_seed(path: Path, result) -> None:
    _atomic_write_text(
        path,
        json.dumps({"seed": result.seed, "metrics": result.metrics, "seconds": result.seconds, "history": result.history}, indent=2),
    )


def read_seed(path: Path):
    from .pipeline import SeedResult

    data = json.loads(path.read_text())
    return SeedResult(data["seed"], data["metrics"], data["seconds"], data["history"])


def _write_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.stem}.part.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def write_experiment(out_dir: Path, experiment, data) -> None:
    from . import figures

    first = experiment.seeds[0]
    metrics = {
        "config": experiment.config.to_dict(),
        "seeds": [{"seed": s.seed, "metrics": s.metrics, "seconds": s.seconds} for s in experiment.seeds],
        "summary": experiment.summary,
        "environment": experiment.environment,
    }
    if first.codes is not None:
        _write_npz(out_dir / "embeddings.npz", z=first.codes, y=data.y, clusters=first.clusters, **first.arrays)
        started = time.perf_counter()
        figures.write_all(out_dir / "figures", experiment, data)
        metrics["seeds"][0]["seconds"]["figures"] = time.perf_counter() - started
        metrics["environment"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # after the last stage
    _atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))


def _fmt(value, name: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if name == "chs" else f"{value:.3f}"


def summary_rows(label: str, summary: dict, n_seeds: int) -> list[list[str]]:
    mean = [_fmt(summary["mean"][m], m) + (f" ± {_fmt(summary['std'][m], m)}" if n_seeds > 1 and summary["std"][m] is not None else "") for m in METRICS]
    best = [_fmt(summary["best"][m], m) for m in METRICS]
    return [[label, f"average ({n_seeds} seed{'s' if n_seeds > 1 else ''})", *mean], [label, "best", *best]]


def markdown_table(rows: list[list[str]]) -> str:
    header = ["run", "", *(METRIC_TITLES[m] for m in METRICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def experiment_table(metrics: dict, label: str) -> str:
    return markdown_table(summary_rows(label, metrics["summary"], len(metrics["seeds"])))


def runs_table(run_metrics: list[tuple[str, dict]]) -> str:
    """One table, two rows (average, best) per run: the layout of the paper's Tables III-V."""
    rows = []
    for label, metrics in run_metrics:
        rows += summary_rows(label, metrics["summary"], len(metrics["seeds"]))
    return markdown_table(rows)
