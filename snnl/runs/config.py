"""The run configurations: one base for what every method shares, one class per method.

``RunConfig`` holds the fields every run has (dataset, seeds, k-means
backend, device, data location, figures, silhouette) and their checks; each
method adds its own: ``ExperimentConfig`` (Agarap & Azcarraga, ``snnl run``)
and ``N2DConfig`` (``snnl n2d``), the latter with its ``ManifoldConfig``.
Each nests the ``TrainConfig`` of its autoencoder (``TRAINING_FIELD``).

What a resumed run may change is field metadata: ``EVALUATION`` marks the
options of the stages after training (those stages are then redone),
``PLACEMENT`` where the data and the computation live and the seeds; every
other field defines the trained models and is fixed, but for the nested
training configuration's own resumable fields (``TrainConfig.resumable_fields``).

Every field is checked when the configuration is built, before any data is
read or any model trained, and nothing here imports torch or scikit-learn:
the ``snnl`` command reads the defaults and choices to build its options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import choices, validate
from ..train.config import TrainConfig, preset
from ..cluster.manifold import ManifoldConfig

EVALUATION = {"resume": "evaluation"}
PLACEMENT = {"resume": "placement"}
SNAPSHOT_SILHOUETTE_SAMPLE = 10_000  # points the silhouette of a snapshot scoring (snnl.methods.n2d) is estimated on


@dataclass
class RunConfig:
    dataset: str = "digits"
    seeds: tuple[int, ...] = field(default=(0,), metadata=PLACEMENT)
    kmeans_backend: str = field(default="auto", metadata=EVALUATION)
    device: str = field(default="auto", metadata=PLACEMENT)
    data_dir: str | None = field(default=None, metadata=PLACEMENT)
    download: bool = field(default=False, metadata=PLACEMENT)
    dataset_options: dict = field(default_factory=dict)  # a built-in dataset's (blobs' parameters)
    # the figures' 2-D projection: PCA, a small share of any run (t-SNE took 469 s of a 2-epoch
    # Fashion-MNIST run on a loaded machine, 41% of its time)
    projection: str = field(default="pca", metadata=EVALUATION)
    silhouette_sample: int | None = field(default=None, metadata=EVALUATION)  # None: the exact O(n^2) silhouette

    METHOD: ClassVar[str]  # config.json's "method"
    TRAINING_FIELD: ClassVar[str]  # the nested TrainConfig's field

    def __post_init__(self):
        """The shared fields' checks; subclasses add their own after calling this."""
        from ..data import dataset_names, dataset_options

        validate.choice("dataset", self.dataset, dataset_names())
        self.seeds = validate.seeds(self.seeds)
        validate.choice("kmeans_backend", self.kmeans_backend, choices.KMEANS_BACKENDS)
        self.device = validate.device(self.device)
        validate.choice("projection", self.projection, choices.PROJECTIONS)
        self.silhouette_sample = validate.integer("silhouette_sample", self.silhouette_sample, 2, allow_none=True)
        dataset_options(self.dataset, self.dataset_options)  # stored as given, checked here
        if not isinstance(self.training, TrainConfig):
            raise TypeError(f"{self.TRAINING_FIELD} must be a TrainConfig, got {type(self.training).__name__}")

    @property
    def training(self) -> TrainConfig:
        """The autoencoder's training configuration."""
        return getattr(self, self.TRAINING_FIELD)

    @classmethod
    def fields_resumed_as(cls, kind: str) -> tuple[str, ...]:
        """The fields a resumed run may change as ``kind`` ("evaluation" or "placement")."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resume") == kind)

    def evaluation(self) -> dict:
        """The options of the stages after training (a finished seed is reused
        on resume only if they are unchanged)."""
        return {
            name: (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
            )
            for name, value in ((n, getattr(self, n)) for n in self.fields_resumed_as("evaluation"))
        }

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["method"] = self.METHOD
        data[self.TRAINING_FIELD] = self.training.to_dict()
        data["seeds"] = list(self.seeds)
        return data

    @classmethod
    def from_dict(cls, data: dict):
        """The inverse of ``to_dict`` (as stored in config.json).  Fields a stored
        configuration lacks (written by an older snnl) take the defaults, which
        are what applied then."""
        data = {key: value for key, value in data.items() if key != "method"}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.METHOD} options {sorted(unknown)}")
        training = TrainConfig.from_dict({**TrainConfig().to_dict(), **data.pop(cls.TRAINING_FIELD, {})})
        return cls(
            **{**cls._nested_from_dict(data), cls.TRAINING_FIELD: training, "seeds": tuple(data.get("seeds", (0,)))}
        )

    @classmethod
    def _nested_from_dict(cls, data: dict) -> dict:
        """``data`` with the method's own nested configurations rebuilt."""
        return data

    def check_dependencies(self) -> None:
        """Optional packages the run will need, before the first epoch."""


@dataclass
class ExperimentConfig(RunConfig):
    """Agarap & Azcarraga's experiment (``snnl.methods.agarap``)."""

    train: TrainConfig = field(default_factory=lambda: preset("snnl-5"))
    # None: the paper's choice: the unsupervised SNNL presets train on the whole
    # training set, the others on the dataset's labelled subset (10,000 images
    # for MNIST and Fashion-MNIST); all training data where it names none.
    # "all": every training example, labelled
    labelled: int | str | None = None
    kmeans_protocol: str = field(default="restarts", metadata=EVALUATION)
    kmeans_restarts: int = field(default=10, metadata=EVALUATION)
    # "test": train on the training split, cluster the test split (Table IV); "all": train on
    # both splits without labels and cluster all of them (N2D's protocol; label-free only)
    protocol: str = "test"

    METHOD: ClassVar[str] = "snnl"
    TRAINING_FIELD: ClassVar[str] = "train"

    def __post_init__(self):
        super().__post_init__()
        if self.labelled != "all":
            try:
                self.labelled = validate.integer("labelled", self.labelled, allow_none=True)
            except ValueError:
                raise ValueError(f"labelled must be an integer >= 1 or 'all', got {self.labelled!r}") from None
        validate.choice("kmeans_protocol", self.kmeans_protocol, choices.KMEANS_PROTOCOLS)
        validate.choice("protocol", self.protocol, choices.RUN_PROTOCOLS)
        if self.protocol == "all" and self.train.uses_labels:
            raise ValueError(
                f"protocol='all' trains on the test images too; {self.train.name} reads labels while training, "
                "so its test labels would be trained on: use protocol='test', or a configuration without labels"
            )
        self.kmeans_restarts = validate.integer("kmeans_restarts", self.kmeans_restarts)

    def check_dependencies(self) -> None:
        from ..cluster.kmeans import resolve_kmeans_backend

        resolve_kmeans_backend(self.kmeans_backend)
        self.train.check_dependencies()

    @property
    def label(self) -> str:
        return self.train.name

    @property
    def trained_epochs(self) -> int | None:
        return self.train.epochs if self.train.method == "autoencoder" else None

    def labelled_count(self) -> int | None:
        from ..data.catalog import IDX_DATASETS

        if self.labelled == "all":
            return None  # the whole training set
        if self.labelled is not None:
            return int(self.labelled)
        if self.train.snnl and not self.train.supervised:
            return None  # needs no labels: the paper trains these rows on the full training set
        spec = IDX_DATASETS.get(self.dataset)
        return spec.labelled_default if spec is not None else None

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["labelled"] = "all" if self.labelled == "all" else self.labelled_count()
        return data


# N2D's autoencoder, as its authors' code trains it (see snnl.methods.n2d)
N2D_AUTOENCODER = TrainConfig(
    name="n2d-ae",
    snnl=False,
    code_activation="linear",
    output_activation="linear",
    epochs=1000,
    init="glorot",
    adam_eps=1e-7,
)


@dataclass
class N2DConfig(RunConfig):
    """N2D (``snnl.methods.n2d``), or its manifold and clustering steps on other points."""

    n_clusters: int | None = None  # None: the number of classes
    autoencoder: TrainConfig = N2D_AUTOENCODER  # its code_dim is set to n_clusters
    manifold: ManifoldConfig = field(default_factory=ManifoldConfig, metadata=EVALUATION)
    cluster: str = field(default="gmm", metadata=EVALUATION)
    codes_from: str | None = None  # an `snnl run` output directory whose test codes to cluster
    raw: bool = False  # no autoencoder: the manifold learner and clustering on the inputs themselves
    snapshot_every: int | None = field(default=None, metadata=PLACEMENT)  # keep the autoencoder every N epochs

    METHOD: ClassVar[str] = "n2d"
    TRAINING_FIELD: ClassVar[str] = "autoencoder"

    def __post_init__(self):
        super().__post_init__()
        validate.choice("cluster", self.cluster, choices.CLUSTERERS)
        if self.raw and self.codes_from is not None:
            raise ValueError("raw and codes_from exclude each other: cluster either the inputs or an SNNL run's codes")
        # one cluster is no clustering: every metric but ACC is undefined
        self.n_clusters = validate.integer("n_clusters", self.n_clusters, 2, allow_none=True)
        if not isinstance(self.manifold, ManifoldConfig):
            raise TypeError(f"manifold must be a ManifoldConfig, got {type(self.manifold).__name__}")
        self.snapshot_every = validate.integer("snapshot_every", self.snapshot_every, allow_none=True)

    @classmethod
    def _nested_from_dict(cls, data: dict) -> dict:
        return {**data, "manifold": ManifoldConfig(**data.get("manifold", {}))}

    def check_dependencies(self) -> None:
        self.manifold.check_dependencies()
        if self.cluster == "kmeans":
            from ..cluster.kmeans import resolve_kmeans_backend

            resolve_kmeans_backend(self.kmeans_backend)

    @property
    def trained_epochs(self) -> int | None:
        return None if self.raw or self.codes_from is not None else self.autoencoder.epochs

    @property
    def label(self) -> str:
        steps = f"{self.manifold.method} + {self.cluster}"
        if self.codes_from is not None:
            return f"{Path(self.codes_from).name} codes + {steps}"
        if self.raw:
            return f"raw inputs + {steps}"
        return f"n2d ({steps})"
