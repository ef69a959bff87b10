"""What a run produces, as plain data: every module imports these, they import nothing of snnl.

A ``SeedResult`` is one seed of one method; ``ExperimentResult`` all seeds of
a run with their summary.  ``to_record`` / ``from_record`` are the form kept
in ``seeds/seedN.json`` (``snnl.runs.outdir`` writes and reads the files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SeedResult:
    seed: int
    metrics: dict  # name -> number (or None where a metric is undefined)
    seconds: dict  # wall time per stage
    history: list[dict]
    codes: np.ndarray | None = None  # the points that were clustered (kept for the first seed only)
    clusters: np.ndarray | None = None
    arrays: dict = field(default_factory=dict)  # more arrays for embeddings.npz (first seed)
    backends: dict = field(default_factory=dict)  # stage -> which implementation ran it ("kmeans": "faiss", ...)

    def to_record(self) -> dict:
        return {
            "seed": self.seed,
            "metrics": self.metrics,
            "backends": self.backends,
            "seconds": self.seconds,
            "history": self.history,
        }

    @classmethod
    def from_record(cls, record: dict) -> SeedResult:
        """Also a record written before backends were kept apart, when they
        sat among the metrics as ``<stage>_backend`` strings."""
        metrics = {k: v for k, v in record["metrics"].items() if not isinstance(v, str)}
        backends = record.get("backends") or {
            k.removesuffix("_backend"): v for k, v in record["metrics"].items() if isinstance(v, str)
        }
        return cls(record["seed"], metrics, record["seconds"], record["history"], backends=backends)


@dataclass
class ExperimentResult:
    config: object  # the run configuration (snnl.runs.config: ExperimentConfig, N2DConfig)
    seeds: list[SeedResult]
    labels: np.ndarray
    summary: dict
    environment: dict
    data_files: tuple = ()  # what was read, with SHA-256 digests (snnl.data.sources.check_file)


def aggregate(seed_metrics: list[dict]) -> dict:
    """mean / std / best over seeds for each metric; "best" is the seed with the
    best ACC.  A metric undefined for some seeds (None) is summarised over the
    others; the spread of a single value is undefined (None, not 0)."""
    best_seed = max(range(len(seed_metrics)), key=lambda i: seed_metrics[i]["acc"])
    summary: dict = {"mean": {}, "std": {}, "best": dict(seed_metrics[best_seed])}
    for name in seed_metrics[0]:
        values = [m[name] for m in seed_metrics if m.get(name) is not None]
        summary["mean"][name] = float(np.mean(values)) if values else None
        summary["std"][name] = float(np.std(values)) if len(values) > 1 else None
    return summary
