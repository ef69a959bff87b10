"""N2D (McConville et al., "N2D: (Not Too) Deep Clustering via Clustering the
Local Manifold of an Autoencoded Embedding"):

    autoencoder d-500-500-2000-k (linear code and output, MSE, Adam, batch 256,
    1000 epochs) on all the data -> UMAP of the codes (20 neighbours,
    min_dist 0, k components) -> Gaussian mixture with k full-covariance
    components

The defaults follow the authors' code (rymc/n2d, ``n2d.py`` and ``run.sh``)
where it differs from the paper's text or from PyTorch's defaults: Keras'
Glorot-uniform initialisation on every layer with zero biases, Adam's epsilon
1e-7 (Keras' ``K.epsilon()``; torch's is 1e-8), and the assignment as the
argmax of the fitted mixture's ``predict_proba``.  Keras' Adam adds epsilon
outside the bias correction of the second moment, which equals torch's form
with epsilon / sqrt(1 - beta2^t): the same value after the first few thousand
steps (274 per epoch on Fashion-MNIST).

Also the pieces of its study: Isomap or t-SNE instead of UMAP, k-means
instead of the mixture, the manifold and mixture steps on the raw inputs
(``raw``, its Table 1 baseline), and, which neither paper did, on the codes
of an SNNL run (``codes_from``).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import choices, distributed, validate
from .cluster import kmeans
from .data import Dataset, load_dataset, train_and_test
from .manifold import embed
from .metrics import evaluate
from .models import encode_in_batches
from .progress import from_verbose
from .records import SeedResult
from .run_config import N2D_AUTOENCODER, SNAPSHOT_SILHOUETTE_SAMPLE, ManifoldConfig, N2DConfig
from .runner import check_output, checkpoint_path, execute
from .train import resolve_device, train_autoencoder, training_seconds


def final_clustering(
    points: np.ndarray, n_clusters: int, method: str, seed: int, kmeans_backend: str = "auto", device=None
) -> np.ndarray:
    if method == "gmm":
        gmm = GaussianMixture(n_components=n_clusters, covariance_type="full", random_state=seed).fit(points)
        return gmm.predict_proba(points).argmax(axis=1).astype(np.int64)  # as N2D's code assigns
    if method == "kmeans":
        return kmeans(points, n_clusters, backend=kmeans_backend, seed=seed, device=device).labels
    raise ValueError(f"cluster must be one of {choices.CLUSTERERS}, got {method!r}")


def _codes_of_run(run_dir: Path) -> tuple[np.ndarray, Dataset, dict]:
    """The test codes of an `snnl run` (first seed), with the raw test set they encode."""
    config_path, npz_path = run_dir / "config.json", run_dir / "embeddings.npz"
    for path in (config_path, npz_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --codes-from needs the --out directory of a finished `snnl run`"
            )
    run_config = json.loads(config_path.read_text())
    if run_config.get("method") != "snnl":
        raise ValueError(f"{run_dir} is not an `snnl run` output (method {run_config.get('method')!r})")
    arrays = np.load(npz_path)
    test = load_dataset(
        run_config["dataset"], "test", data_dir=run_config.get("data_dir"), **run_config.get("dataset_options", {})
    )
    if not np.array_equal(arrays["y"], test.y):
        raise ValueError(f"{npz_path}: its labels do not match the {run_config['dataset']} test set")
    return arrays["z"], test, run_config


def run_n2d(config: N2DConfig, out_dir=None, *, resume: bool = False, progress: bool = True):
    """N2D (or its manifold + clustering steps on an SNNL run's codes), over seeds."""
    config.check_dependencies()
    # its changes are checked once the data has fixed n_clusters (in execute)
    check_output(config, out_dir, resume, changes=False)
    device = resolve_device(config.device)
    if config.codes_from is not None:
        source_codes, data, run_config = _codes_of_run(Path(config.codes_from))
        config = dataclasses.replace(config, dataset=run_config["dataset"])
    else:
        source_codes = None
        data = train_and_test(
            config.dataset, data_dir=config.data_dir, download=config.download, **config.dataset_options
        )
    k = config.n_clusters or data.n_classes
    if k > len(data):
        raise ValueError(f"n_clusters={k} is more than the {len(data)} points to cluster")
    config.manifold.check_data(len(data))
    config = dataclasses.replace(config, n_clusters=k, autoencoder=config.autoencoder.replace(code_dim=k))

    def run_seed(seed: int, keep: bool) -> SeedResult:
        seconds, history = {}, []
        if config.raw:
            codes = data.x
        elif source_codes is None:
            started = time.perf_counter()
            checkpoint = checkpoint_path(out_dir, seed)
            trained = train_autoencoder(
                data.x,
                None,
                config.autoencoder,
                seed=seed,
                device=device,
                checkpoint_path=checkpoint,
                resume=resume,
                progress=progress,
                snapshot_every=config.snapshot_every,
            )
            history = trained.history
            seconds["train"] = training_seconds(history, time.perf_counter() - started)
            if not distributed.is_main_process():  # only the main process evaluates
                return SeedResult(seed, {}, seconds, history)
            started = time.perf_counter()
            codes = encode_in_batches(trained.model, data.x).numpy()
            seconds["encode"] = time.perf_counter() - started
        else:
            codes = source_codes
        started = time.perf_counter()
        points, manifold_backend = embed(codes, k, config.manifold, seed=seed)
        seconds["manifold"] = time.perf_counter() - started
        started = time.perf_counter()
        clusters = final_clustering(points, k, config.cluster, seed, config.kmeans_backend, device)
        seconds["cluster"] = time.perf_counter() - started
        started = time.perf_counter()
        metrics = evaluate(
            points, data.y, clusters, device=device, silhouette_sample=config.silhouette_sample, seed=seed
        )
        seconds["metrics"] = time.perf_counter() - started
        arrays = {"codes": codes} if keep and not config.raw else {}  # raw: the codes are the inputs
        return SeedResult(
            seed,
            metrics,
            seconds,
            history,
            points if keep else None,
            clusters if keep else None,
            arrays,
            backends={"manifold": manifold_backend},
        )

    return execute(config, data, run_seed, out_dir, resume=resume, progress=progress)


class N2D(ClusterMixin, BaseEstimator):
    """N2D as a scikit-learn estimator: ``N2D(n_clusters=10).fit_predict(X)``.

    Parameters are checked in ``fit`` before any training, optional packages
    too (UMAP).  After fitting: ``labels_``, ``embedding_`` (the manifold
    embedding that was clustered), ``codes_`` (autoencoder codes), ``model_``
    (the autoencoder), ``n_features_in_`` and, for DataFrames,
    ``feature_names_in_``.  The reconstruction is linear (MSE): any finite
    inputs.  ``random_state`` seeds everything without touching the global
    random state.  ``epochs`` defaults to the paper's 1000: on digits 13 to
    31 minutes on 2 CPU cores, as busy as they were (ACC 0.88), where
    ``epochs=50`` takes about 25 s (ACC 0.84; ``bench/estimator_fits.py``).  ``verbose``:
    training progress on stderr, bars on a terminal and a line per epoch
    otherwise (the default); ``"lines"``; ``False`` or 0: nothing.
    """

    def __init__(
        self,
        n_clusters=10,
        *,
        epochs=1000,
        batch_size=256,
        learning_rate=1e-3,
        patience=None,
        manifold="umap",
        n_neighbors=20,
        min_dist=0.0,
        umap_backend="auto",
        cluster="gmm",
        device="auto",
        random_state=None,
        verbose=True,
    ):
        self.n_clusters = n_clusters
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.patience = patience
        self.manifold = manifold
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.umap_backend = umap_backend
        self.cluster = cluster
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        """The autoencoder and manifold configurations, checked (before any work)."""
        validate.integer("n_clusters", self.n_clusters, 1)  # one cluster is allowed, as in KMeans and GaussianMixture
        validate.choice("cluster", self.cluster, choices.CLUSTERERS)
        validate.device(self.device)
        from_verbose(self.verbose)
        config = N2D_AUTOENCODER.replace(
            code_dim=int(self.n_clusters),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
        )
        manifold = ManifoldConfig(
            method=self.manifold,
            umap_neighbors=self.n_neighbors,
            umap_min_dist=self.min_dist,
            umap_backend=self.umap_backend,
        )
        manifold.check_dependencies()
        return config, manifold

    def fit(self, X, y=None):
        config, manifold = self._check_params()
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        if self.n_clusters > len(X):
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {len(X)} samples")
        if manifold.method == "umap" and manifold.umap_neighbors >= len(X):
            # as umap-learn does with small data: fewer neighbours, said aloud
            neighbors = max(2, len(X) - 1)
            warnings.warn(
                f"n_neighbors={manifold.umap_neighbors} is not below the {len(X)} samples; UMAP uses {neighbors}",
                UserWarning,
                stacklevel=2,
            )
            manifold = dataclasses.replace(manifold, umap_neighbors=neighbors)
        manifold.check_data(len(X))
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        trained = train_autoencoder(X, None, config, seed=seed, device=self.device, progress=from_verbose(self.verbose))
        self.model_ = trained.model
        self.codes_ = encode_in_batches(trained.model, X).numpy()
        self.embedding_, _ = embed(self.codes_, int(self.n_clusters), manifold, seed=seed)
        self.labels_ = final_clustering(self.embedding_, int(self.n_clusters), self.cluster, seed)
        return self

    def fit_predict(self, X, y=None):
        return self.fit(X).labels_

    def score_against(self, y_true) -> dict:
        """The six metrics of the last fit against true labels."""
        check_is_fitted(self, "labels_")
        return evaluate(self.embedding_, np.asarray(y_true), self.labels_)


def score_snapshots(
    run_dir,
    *,
    silhouette_sample: int | None = SNAPSHOT_SILHOUETTE_SAMPLE,
    scoring_seeds=None,
    epochs=None,
    progress=print,
) -> list[dict]:
    """N2D's metrics on the way through training: every snapshot an
    ``snnl n2d --snapshot-every N`` run keeps (``checkpoints/seedS-epochE.pt``)
    is encoded and put through the run's own UMAP and clustering steps (same
    options, the seed's own random state), as if training had stopped there.

    ``scoring_seeds``: score each snapshot once per random state given for
    UMAP, the mixture and the silhouette's sample, instead of once with the
    training seed: on a fixed autoencoder this stage alone moves N2D's ACC by
    a few hundredths, so one scoring cannot tell a trend over epochs from it.
    ``epochs``: score only the snapshots of these epochs (each scoring of
    Fashion-MNIST takes minutes), every one of which must exist.
    Rows ``{seed, epoch, scoring_seed, acc, nmi, ari, ...}`` sorted by seed,
    epoch and scoring seed."""
    import re

    from .train import model_from_checkpoint

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: pass the --out directory of an `snnl n2d` run")
    stored = json.loads(config_path.read_text())
    if stored.get("method") != "n2d":
        raise ValueError(f"{run_dir} is not an `snnl n2d` run (method {stored.get('method')!r})")
    config = N2DConfig.from_dict(stored)
    if scoring_seeds is not None:
        scoring_seeds = validate.seeds(scoring_seeds)
    pattern = re.compile(r"seed(\d+)-epoch(\d+)\.pt")
    found = sorted(
        (int(m[1]), int(m[2]), path)
        for path in (run_dir / "checkpoints").glob("seed*-epoch*.pt")
        if (m := pattern.fullmatch(path.name))
    )
    if not found:
        raise FileNotFoundError(f"no snapshots in {run_dir / 'checkpoints'}: train with --snapshot-every N")
    if epochs is not None:
        kept = sorted({epoch for _, epoch, _ in found})
        missing = sorted(set(epochs) - set(kept))
        if missing:
            raise FileNotFoundError(
                f"no snapshot of epoch(s) {missing} in {run_dir / 'checkpoints'} (it has epochs {kept})"
            )
        found = [entry for entry in found if entry[1] in epochs]
    config.manifold.check_dependencies()
    data = train_and_test(config.dataset, data_dir=config.data_dir, **config.dataset_options)
    k = config.n_clusters or data.n_classes
    rows = []
    for seed, epoch, path in found:
        codes = encode_in_batches(model_from_checkpoint(path), data.x).numpy()
        for scoring_seed in scoring_seeds or (seed,):
            started = time.perf_counter()
            points, backend = embed(codes, k, config.manifold, seed=scoring_seed)
            clusters = final_clustering(points, k, config.cluster, scoring_seed, config.kmeans_backend)
            metrics = evaluate(points, data.y, clusters, silhouette_sample=silhouette_sample, seed=scoring_seed)
            rows.append(
                {
                    "seed": seed,
                    "epoch": epoch,
                    "scoring_seed": scoring_seed,
                    **metrics,
                    "manifold_backend": backend,
                    "snapshot": path.name,
                    "seconds": time.perf_counter() - started,
                }
            )
            progress(
                f"seed {seed} epoch {epoch} scoring seed {scoring_seed}: ACC {metrics['acc']:.4f} "
                f"NMI {metrics['nmi']:.4f} ARI {metrics['ari']:.4f} ({rows[-1]['seconds']:.0f} s)"
            )
    return rows


def summarise_scorings(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and range (over scoring seeds) of ACC, NMI and ARI
    for each snapshot scored by :func:`score_snapshots`."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["seed"], row["epoch"]), []).append(row)
    summary = []
    for (seed, epoch), group in sorted(groups.items()):
        entry: dict[str, object] = {"seed": seed, "epoch": epoch, "scorings": len(group)}
        for metric in ("acc", "nmi", "ari"):
            values = np.array([row[metric] for row in group])
            entry[metric] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "min": float(values.min()),
                "max": float(values.max()),
            }
        summary.append(entry)
    return summary


def write_snapshot_scores(
    run_dir,
    output,
    *,
    force: bool = False,
    silhouette_sample: int | None = SNAPSHOT_SILHOUETTE_SAMPLE,
    scoring_seeds=None,
    epochs=None,
    progress=print,
) -> dict:
    """``score_snapshots`` written to the JSON file ``output`` (atomically; an
    existing file only with ``force``, refused before any scoring), with the
    per-snapshot summary (``summarise_scorings``) and the environment: the
    same snapshot scored under other threads or code can move.  Returns the document."""
    import torch

    from .atomic import write_text
    from .provenance import environment

    output = Path(output)
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists: pass --force to replace it, or choose another --output")
    rows = score_snapshots(
        run_dir, silhouette_sample=silhouette_sample, scoring_seeds=scoring_seeds, epochs=epochs, progress=progress
    )
    document = {
        "run": str(run_dir),
        "silhouette_sample": silhouette_sample,
        "scoring_seeds": None if scoring_seeds is None else list(scoring_seeds),
        "snapshots": rows,
        "by_snapshot": summarise_scorings(rows),
        "environment": environment(torch.device("cpu")),
    }
    write_text(output, json.dumps(document, indent=1) + "\n")
    return document
