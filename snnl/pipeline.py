"""The experiment of Agarap & Azcarraga, end to end, for one configuration:

    labelled training subset -> train the autoencoder (or PCA for ``original``)
    -> encode the test set -> k-means (k = number of classes) -> six metrics

repeated over seeds, aggregated (mean, std, best by ACC), and written to an
output directory, by the runner every method shares (``snnl.runner``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from . import distributed
from .cluster import KMEANS_BACKENDS, PROTOCOLS, kmeans, resolve_kmeans_backend
from .config import TrainConfig, check_choice, check_device, check_positive_int, check_seeds, preset
from .data import Dataset, labelled_subset, load_splits
from .data.catalog import IDX_DATASETS
from .metrics import evaluate
from .models import encode_in_batches
from .records import ExperimentResult, SeedResult
from .runner import PROJECTIONS, check_output, checkpoint_path, execute
from .train import resolve_device, train_autoencoder, training_seconds


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


def cluster_and_score(points: np.ndarray, labels: np.ndarray, n_clusters: int, seconds: dict, device, *,
                      backend="auto", protocol="restarts", restarts=10, seed=0,
                      silhouette_sample=None) -> tuple[np.ndarray, dict, str]:
    """k-means on ``points`` and the six metrics, timing both stages into
    ``seconds``: (clusters, metrics, the k-means backend that ran)."""
    started = time.perf_counter()
    clustering = kmeans(points, n_clusters, backend=backend, protocol=protocol, n_init=restarts, seed=seed,
                        device=device)
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(points, labels, clustering.labels, device=device, silhouette_sample=silhouette_sample,
                       seed=seed)
    seconds["metrics"] = time.perf_counter() - started
    return clustering.labels, metrics, clustering.backend


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
            result = train_autoencoder(subset.x, subset.y, config.train, seed=seed, device=device, image_shape=subset.image_shape,
                                       checkpoint_path=checkpoint, resume=resume, progress=progress)
            history = result.history
            seconds["train"] = training_seconds(history, time.perf_counter() - started)
            if not distributed.is_main_process():
                return SeedResult(seed, {}, seconds, history)
            started = time.perf_counter()
            codes = encode_in_batches(result.model, test.x).numpy()
        seconds["encode"] = time.perf_counter() - started
        clusters, metrics, kmeans_backend = cluster_and_score(
            codes, test.y, test.n_classes, seconds, device, backend=config.kmeans_backend,
            protocol=config.kmeans_protocol, restarts=config.kmeans_restarts, seed=seed,
            silhouette_sample=config.silhouette_sample,
        )
        return SeedResult(seed, metrics, seconds, history, codes if keep else None, clusters if keep else None,
                          backends={"kmeans": kmeans_backend})

    return execute(config, test, run_seed, out_dir, resume=resume, data_files=train.files + test.files,
                   progress=progress)
