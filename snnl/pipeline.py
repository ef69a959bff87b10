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

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from . import distributed, outdir, report
from .checkpoints import previous_path
from .cluster import KMEANS_BACKENDS, PROTOCOLS, kmeans, resolve_kmeans_backend
from .config import TrainConfig, check_choice, check_device, check_positive_int, check_seeds, preset
from .data import Dataset, labelled_subset, load_splits
from .data.catalog import IDX_DATASETS
from .metrics import METRICS, evaluate
from .models import encode_in_batches
from .train import describe_changes, resolve_device, train_autoencoder, training_seconds

PROJECTIONS = ("tsne", "pca", "none")


@dataclass
class ExperimentConfig:
    dataset: str = "digits"
    train: TrainConfig = field(default_factory=lambda: preset("snnl-5"))
    seeds: tuple[int, ...] = (0,)
    # None: the paper's choice: the unsupervised SNNL presets train on the whole
    # training set, the others on the dataset's labelled subset (10,000 images
    # for MNIST and Fashion-MNIST); all training data where it names none
    labelled: int | None = None
    kmeans_backend: str = "auto"
    kmeans_protocol: str = "restarts"
    kmeans_restarts: int = 10
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    dataset_options: dict = field(default_factory=dict)  # blobs parameters
    projection: str = "tsne"  # 2-D projection in the figure: "tsne", "pca" or "none"
    silhouette_sample: int | None = None  # None: the exact O(n^2) silhouette

    # What a resumed run may change (snnl.resume): the options of the stages
    # after training (those stages are then redone), where the data and the
    # computation live, and the seeds.  Everything else defines the trained
    # models; of the training options only those in train.RESUMABLE_CHANGES.
    EVALUATION_FIELDS = ("kmeans_backend", "kmeans_protocol", "kmeans_restarts", "projection", "silhouette_sample")
    PLACEMENT_FIELDS = ("device", "data_dir", "download", "seeds")

    def __post_init__(self):
        """Every option checked before any data is read or any model trained."""
        from .data import dataset_names
        from .data.builtin import blobs_options

        check_choice("dataset", self.dataset, dataset_names())
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        self.seeds = check_seeds(self.seeds)
        self.labelled = check_positive_int("labelled", self.labelled, allow_none=True)
        check_choice("kmeans_backend", self.kmeans_backend, KMEANS_BACKENDS)
        check_choice("kmeans_protocol", self.kmeans_protocol, PROTOCOLS)
        self.kmeans_restarts = check_positive_int("kmeans_restarts", self.kmeans_restarts)
        self.device = check_device(self.device)
        check_choice("projection", self.projection, PROJECTIONS)
        self.silhouette_sample = check_positive_int("silhouette_sample", self.silhouette_sample, 2, allow_none=True)
        if self.dataset_options and self.dataset != "blobs":
            raise ValueError(f"dataset options are blobs parameters; {self.dataset} takes none")
        if self.dataset == "blobs":
            blobs_options(**self.dataset_options)

    def check_dependencies(self) -> None:
        """Optional packages the run will need, before the first epoch."""
        resolve_kmeans_backend(self.kmeans_backend)

    @property
    def label(self) -> str:
        return self.train.name

    @property
    def trained_epochs(self) -> int | None:
        return self.train.epochs if self.train.method == "autoencoder" else None

    def evaluation(self) -> dict:
        """The options of the stages after training (a finished seed is reused
        on resume only if they are unchanged)."""
        return {name: getattr(self, name) for name in self.EVALUATION_FIELDS}

    def labelled_count(self) -> int | None:
        if self.labelled is not None:
            return self.labelled
        if self.train.snnl and not self.train.supervised:
            return None  # needs no labels: the paper trains these rows on the full training set
        spec = IDX_DATASETS.get(self.dataset)
        return spec.labelled_default if spec is not None else None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["method"] = "snnl"
        data["train"] = self.train.to_dict()
        data["seeds"] = list(self.seeds)
        data["labelled"] = self.labelled_count()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        """The inverse of ``to_dict`` (as stored in config.json)."""
        data = {key: value for key, value in data.items() if key != "method"}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown experiment options {sorted(unknown)}")
        train = TrainConfig.from_dict({**TrainConfig().to_dict(), **data.pop("train", {})})
        return cls(train=train, **{**data, "seeds": tuple(data.get("seeds", (0,)))})


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
    data_files: tuple = ()  # what was read, with SHA-256 digests (snnl.data.sources.check_file)


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


def checkpoint_path(out_dir, seed: int) -> Path | None:
    return Path(out_dir) / "checkpoints" / f"seed{seed}.pt" if out_dir is not None else None


def _claim_output(out_dir: Path, config, resume: bool, *, announce: bool) -> None:
    """The main process checks that the run may write into ``out_dir`` (and,
    resuming, what changes, said on stderr when ``announce``; see
    ``snnl.outdir``); every process learns the outcome, so that none trains
    for a run that will not be written."""
    error = None
    if distributed.is_main_process():
        try:
            stored = outdir.claim(out_dir, resume)
            if stored is not None:
                changes = outdir.resume_changes(stored, config)
                if changes and announce:
                    print(f"resuming {out_dir} with {describe_changes(changes)}", file=sys.stderr)
        except (OSError, ValueError) as caught:
            error = caught
    failed = distributed.all_reduce_tensor(torch.tensor([0.0 if error is None else 1.0]))
    if error is not None:
        raise error
    if float(failed[0]) > 0:
        raise RuntimeError(f"the main process refused the output directory {out_dir} (see its message)")


def check_output(config, out_dir, resume: bool, *, changes: bool = True) -> None:
    """Before any data is read or model trained: ``out_dir`` may take this run
    (``snnl.outdir.check``) and, resuming, ``config`` changes only what a
    resumed run may (``changes``: when ``config`` is already complete), so
    that a mistyped path or a changed dataset is named at once."""
    if out_dir is None:
        if resume:
            raise ValueError("resuming needs the output directory of the run to continue (--out)")
        return
    if not distributed.is_main_process():  # the main process owns the directory (see _claim_output)
        return
    stored = outdir.check(out_dir, resume)
    if stored is not None and changes:
        outdir.resume_changes(stored, config)


def _reusable(finished: Path, config, out_dir: Path, seed: int) -> bool:
    """A finished seed is reused when its evaluation options and trained epochs
    are the current ones; otherwise its stages after training are redone from
    its last checkpoint, which must then exist."""
    stored = report.read_seed_record(finished)
    if stored.get("evaluation") == config.evaluation() and stored.get("trained_epochs") == config.trained_epochs:
        return True
    checkpoint = checkpoint_path(out_dir, seed)
    if config.trained_epochs is not None and not (checkpoint.is_file() or previous_path(checkpoint).is_file()):
        raise FileNotFoundError(
            f"seed {seed} must be evaluated again (its options changed) but its checkpoint {checkpoint} is gone; "
            "resume with the stored options, or start a new --out"
        )
    return False


def execute(config, data: Dataset, run_seed: Callable[[int, bool], SeedResult], out_dir=None, *,
            resume: bool = False, data_files: tuple = (), progress=True) -> ExperimentResult:
    """Run ``run_seed(seed, keep_arrays)`` for every seed of ``config`` and collect the results.

    ``data`` is what was clustered (its labels score the clustering; its raw
    inputs appear in the projection figure); ``data_files`` every file read.
    With ``out_dir``, the run holds the directory's lock throughout (main process).
    """
    main = distributed.is_main_process()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is None:
        return _execute(config, data, run_seed, None, resume, data_files, progress)
    # before the lock: never create a lock file in a refused directory
    _claim_output(out_dir, config, resume, announce=False)
    with outdir.locked(out_dir) if main else contextlib.nullcontext():
        # again, under the lock, where it counts: two runs cannot both pass it
        _claim_output(out_dir, config, resume, announce=True)
        if main:
            report.write_config(out_dir, config)
        distributed.barrier()
        return _execute(config, data, run_seed, out_dir, resume, data_files, progress)


def _execute(config, data, run_seed, out_dir, resume, data_files, progress) -> ExperimentResult:
    main = distributed.is_main_process()
    results = []
    for position, seed in enumerate(config.seeds):
        first = position == 0  # its arrays and history feed embeddings.npz and the figures
        finished = out_dir / "seeds" / f"seed{seed}.json" if out_dir is not None else None
        if resume and not first and finished.is_file() and _reusable(finished, config, out_dir, seed):
            results.append(report.read_seed(finished))
            continue
        result = run_seed(seed, first)
        if finished is not None and main:
            report.write_seed(finished, result, config)
        distributed.barrier()  # evaluation and writing happen on the main process
        results.append(result)
    if not main:  # the other processes only trained
        return ExperimentResult(config, results, data.y, {}, {})
    summary = aggregate([r.metrics for r in results])
    experiment = ExperimentResult(config, results, data.y, summary, report.environment(resolve_device(config.device)),
                                  tuple(data_files or data.files))
    if out_dir is not None:
        report.write_experiment(out_dir, experiment, data, progress=progress not in (False, "none"))
    return experiment


def load_train_and_test(config) -> tuple[Dataset, Dataset]:
    """Both splits, from one directory (``snnl.data.load_splits``)."""
    train, test = load_splits(config.dataset, ("train", "test"), data_dir=config.data_dir, download=config.download,
                              **config.dataset_options)
    return train, test


def run_experiment(config: ExperimentConfig, out_dir: str | Path | None = None, *, resume: bool = False,
                   progress: bool = True) -> ExperimentResult:
    """Agarap & Azcarraga's experiment for ``config`` (see the module docstring)."""
    config.check_dependencies()
    check_output(config, out_dir, resume)
    train, test = load_train_and_test(config)
    labelled = config.labelled_count()
    if labelled is not None and labelled > len(train):
        raise ValueError(f"labelled: {labelled} labelled examples asked for, but the {config.dataset} training set "
                         f"has {len(train)}")
    if test.n_classes > len(test):
        raise ValueError(f"k-means with {test.n_classes} clusters needs at least as many test points; there are "
                         f"{len(test)}")
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
            checkpoint = checkpoint_path(out_dir, seed)
            result = train_autoencoder(subset.x, subset.y, config.train, seed=seed, device=device,
                                       checkpoint_path=checkpoint, resume=resume, progress=progress)
            history = result.history
            seconds["train"] = training_seconds(history, time.perf_counter() - started)
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

    return execute(config, test, run_seed, out_dir, resume=resume, data_files=train.files + test.files,
                   progress=progress)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} the --out directory of a finished run?")
    return json.loads(path.read_text())
