"""The experiment of Agarap & Azcarraga, end to end, for one configuration:

    labelled training subset -> train the autoencoder (or PCA for ``original``)
    -> encode the test set -> k-means (k = number of classes) -> six metrics

repeated over seeds, aggregated (mean, std, best by ACC), and written to an
output directory (see ``snnl.report``).  With ``resume=True`` finished seeds
are read back and an interrupted seed continues from its last checkpoint.

``execute`` is the part every method shares (N2D uses it too): the loop
over seeds, resuming, aggregation and the output directory.  Under
torch.distributed (``torchrun``) every process trains; the main process alone
evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from . import distributed, report
from .cluster import kmeans
from .config import TrainConfig, preset
from .data import Dataset, labelled_subset, load_dataset
from .data.catalog import IDX_DATASETS
from .metrics import METRICS, evaluate
from .models import encode_in_batches
from .train import resolve_device, train_autoencoder


@dataclass
class ExperimentConfig:
    dataset: str = "digits"
    train: TrainConfig = field(default_factory=lambda: preset("snnl-5"))
    seeds: tuple[int, ...] = (0,)
    labelled: int | None = None  # None: the paper's subset for the dataset, else all training data
    kmeans_backend: str = "auto"
    kmeans_protocol: str = "restarts"
    kmeans_restarts: int = 10
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    dataset_options: dict = field(default_factory=dict)  # blobs parameters
    projection: str = "tsne"  # 2-D projection in the figure: "tsne", "pca" or "none"
    silhouette_sample: int | None = None  # None: the exact O(n^2) silhouette

    @property
    def label(self) -> str:
        return self.train.name

    def labelled_count(self) -> int | None:
        if self.labelled is not None:
            return self.labelled
        spec = IDX_DATASETS.get(self.dataset)
        return spec.labelled_default if spec is not None else None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["method"] = "snnl"
        data["train"] = self.train.to_dict()
        data["seeds"] = list(self.seeds)
        data["labelled"] = self.labelled_count()
        return data


@dataclass
class SeedResult:
    seed: int
    metrics: dict
    seconds: dict  # wall time per stage
    history: list[dict]
    codes: np.ndarray | None = None  # the points that were clustered (kept for the first seed only)
    clusters: np.ndarray | None = None
    arrays: dict = field(default_factory=dict)  # more arrays for embeddings.npz (first seed)


@dataclass
class ExperimentResult:
    config: object
    seeds: list[SeedResult]
    labels: np.ndarray
    summary: dict
    environment: dict


def aggregate(seed_metrics: list[dict]) -> dict:
    """mean / std / best over seeds for each metric; "best" is the seed with the best ACC."""
    best_seed = max(range(len(seed_metrics)), key=lambda i: seed_metrics[i]["acc"])
    summary = {"mean": {}, "std": {}, "best": dict(seed_metrics[best_seed])}
    for name in METRICS:
        values = [m[name] for m in seed_metrics if m[name] is not None]
        summary["mean"][name] = float(np.mean(values)) if values else None
        summary["std"][name] = float(np.std(values)) if values else None
    return summary


def cluster_and_score(points: np.ndarray, labels: np.ndarray, n_clusters: int, seconds: dict, device, *,
                      backend="auto", protocol="restarts", restarts=10, seed=0,
                      silhouette_sample=None) -> tuple[np.ndarray, dict]:
    """k-means on ``points`` and the six metrics, timing both stages into ``seconds``."""
    started = time.perf_counter()
    clustering = kmeans(points, n_clusters, backend=backend, protocol=protocol, n_init=restarts, seed=seed,
                        device=device)
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(points, labels, clustering.labels, device=device, silhouette_sample=silhouette_sample,
                       seed=seed)
    seconds["metrics"] = time.perf_counter() - started
    metrics["kmeans_backend"] = clustering.backend
    return clustering.labels, metrics


def execute(config, data: Dataset, run_seed: Callable[[int, bool], SeedResult], out_dir=None, *,
            resume: bool = False) -> ExperimentResult:
    """Run ``run_seed(seed, keep_arrays)`` for every seed of ``config`` and collect the results.

    ``data`` is what was clustered (its labels score the clustering; its raw
    inputs appear in the projection figure).
    """
    if not config.seeds:
        raise ValueError("at least one seed is needed")
    main = distributed.is_main_process()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        report.check_output_dir(out_dir, config, resume)
        distributed.barrier()  # every process checks before the main one writes
        if main:
            report.write_config(out_dir, config)
        distributed.barrier()
    results = []
    for position, seed in enumerate(config.seeds):
        first = position == 0  # its arrays and history feed embeddings.npz and the figures
        finished = out_dir / "seeds" / f"seed{seed}.json" if out_dir is not None else None
        if resume and not first and finished.is_file():
            results.append(report.read_seed(finished))
            continue
        result = run_seed(seed, first)
        if finished is not None and main:
            report.write_seed(finished, result)
        distributed.barrier()  # evaluation and writing happen on the main process
        results.append(result)
    if not main:  # the other processes only trained
        return ExperimentResult(config, results, data.y, {}, {})
    summary = aggregate([r.metrics for r in results])
    experiment = ExperimentResult(config, results, data.y, summary, report.environment(resolve_device(config.device)))
    if out_dir is not None:
        report.write_experiment(out_dir, experiment, data)
    return experiment


def load_split(config, split: str) -> Dataset:
    return load_dataset(config.dataset, split, data_dir=config.data_dir, download=config.download,
                        **config.dataset_options)


def run_experiment(config: ExperimentConfig, out_dir: str | Path | None = None, *, resume: bool = False,
                   progress: bool = True) -> ExperimentResult:
    """Agarap & Azcarraga's experiment for ``config`` (see the module docstring)."""
    train, test = load_split(config, "train"), load_split(config, "test")
    device = resolve_device(config.device)

    def run_seed(seed: int, keep: bool) -> SeedResult:
        seconds = {}
        subset = labelled_subset(train, config.labelled_count(), seed)
        started = time.perf_counter()
        history: list[dict] = []
        if config.train.method == "pca":
            pca = PCA(n_components=min(config.train.code_dim, *subset.x.shape), random_state=seed).fit(subset.x)
            seconds["train"] = time.perf_counter() - started
            started = time.perf_counter()
            codes = pca.transform(test.x).astype(np.float32)
        else:
            checkpoint = Path(out_dir) / "checkpoints" / f"seed{seed}.pt" if out_dir is not None else None
            result = train_autoencoder(subset.x, subset.y, config.train, seed=seed, device=device,
                                       checkpoint_path=checkpoint, resume=resume, progress=progress)
            history = result.history
            seconds["train"] = time.perf_counter() - started
            if not distributed.is_main_process():
                return SeedResult(seed, {}, seconds, history)
            started = time.perf_counter()
            codes = encode_in_batches(result.model, test.x).numpy()
        seconds["encode"] = time.perf_counter() - started
        clusters, metrics = cluster_and_score(
            codes, test.y, test.n_classes, seconds, device, backend=config.kmeans_backend,
            protocol=config.kmeans_protocol, restarts=config.kmeans_restarts, seed=seed,
            silhouette_sample=config.silhouette_sample,
        )
        return SeedResult(seed, metrics, seconds, history, codes if keep else None, clusters if keep else None)

    return execute(config, test, run_seed, out_dir, resume=resume)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} the --out directory of a finished run?")
    return json.loads(path.read_text())
