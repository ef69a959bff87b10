"""The experiment of Agarap & Azcarraga, end to end, for one configuration:

    labelled training subset -> train the autoencoder (or PCA for ``original``)
    -> encode the test set -> k-means (k = number of classes) -> six metrics

(or, ``protocol="all"``, N2D's: train on both splits without labels and
cluster every image), repeated over seeds, aggregated (mean, std, best by ACC), and written to an
output directory, by the runner every method shares (``snnl.runs.runner``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import distributed
from ..cluster.kmeans import kmeans
from ..data import Dataset, combined, labelled_subset, load_splits
from ..encoders import fit_encoder
from ..metrics import evaluate
from ..runs.config import ExperimentConfig
from ..runs.records import ExperimentResult, SeedResult
from ..runs.runner import check_output, checkpoint_path, execute
from ..train.config import with_pseudo_label_clusters
from ..train.loop import check_training_data, resolve_device, training_seconds


def cluster_and_score(
    points: np.ndarray,
    labels: np.ndarray,
    n_clusters: int,
    seconds: dict,
    device,
    *,
    backend="auto",
    protocol="restarts",
    restarts=10,
    seed=0,
    silhouette_sample=None,
) -> tuple[np.ndarray, dict, str]:
    """k-means on ``points`` and the six metrics, timing both stages into
    ``seconds``: (clusters, metrics, the k-means backend that ran)."""
    started = time.perf_counter()
    clustering = kmeans(
        points, n_clusters, backend=backend, protocol=protocol, n_init=restarts, seed=seed, device=device
    )
    seconds["cluster"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(points, labels, clustering.labels, device=device, silhouette_sample=silhouette_sample, seed=seed)
    seconds["metrics"] = time.perf_counter() - started
    return clustering.labels, metrics, clustering.backend


def load_train_and_test(config) -> tuple[Dataset, Dataset]:
    """Both splits, from one directory (``snnl.data.load_splits``)."""
    train, test = load_splits(
        config.dataset, ("train", "test"), data_dir=config.data_dir, download=config.download, **config.dataset_options
    )
    return train, test


def run_experiment(
    config: ExperimentConfig, out_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True
) -> ExperimentResult:
    """Agarap & Azcarraga's experiment for ``config`` (see the module docstring)."""
    config.check_dependencies()
    check_output(config, out_dir, resume)
    train, test = load_train_and_test(config)
    if config.protocol == "all":  # N2D's: every image trained on without labels, and clustered
        train = test = combined(train, test)
    labelled = config.labelled_count()
    if labelled is not None and labelled > len(train):
        raise ValueError(
            f"labelled: {labelled} labelled examples asked for, but the {config.dataset} training set has {len(train)}"
        )
    if test.n_classes > len(test):
        raise ValueError(
            f"k-means with {test.n_classes} clusters needs at least as many test points; there are {len(test)}"
        )
    device = resolve_device(config.device)
    # the data, before the output directory is claimed: a refusal leaves nothing behind
    training = with_pseudo_label_clusters(config.train, test.n_classes)
    if training.method == "autoencoder":  # the whole split: every seed's subset lies in it
        check_training_data(train.x, train.y, training)
    if not np.isfinite(test.x).all():
        raise ValueError(f"the {config.dataset} {test.split} images contain NaN or Inf")

    def run_seed(seed: int, keep: bool) -> SeedResult:
        seconds = {}
        subset = labelled_subset(train, config.labelled_count(), seed)
        started = time.perf_counter()
        encoder = fit_encoder(
            subset.x,
            subset.y,
            with_pseudo_label_clusters(config.train, test.n_classes),
            seed=seed,
            device=device,
            image_shape=subset.image_shape,
            checkpoint_path=checkpoint_path(out_dir, seed),
            resume=resume,
            progress=progress,
        )
        history = encoder.history
        seconds["train"] = training_seconds(history, time.perf_counter() - started)
        if not distributed.is_main_process():  # the other processes only trained
            return SeedResult(seed, {}, seconds, history)
        started = time.perf_counter()
        codes = encoder.encode(test.x)
        seconds["encode"] = time.perf_counter() - started
        clusters, metrics, kmeans_backend = cluster_and_score(
            codes,
            test.y,
            test.n_classes,
            seconds,
            device,
            backend=config.kmeans_backend,
            protocol=config.kmeans_protocol,
            restarts=config.kmeans_restarts,
            seed=seed,
            silhouette_sample=config.silhouette_sample,
        )
        return SeedResult(
            seed,
            metrics,
            seconds,
            history,
            codes if keep else None,
            clusters if keep else None,
            backends={"kmeans": kmeans_backend},
        )

    return execute(
        config, test, run_seed, out_dir, resume=resume, data_files=train.files + test.files, progress=progress
    )
