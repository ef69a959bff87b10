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

The estimator is ``snnl.estimators.N2D``; the scoring of snapshots taken on
the way through training ``snnl.methods.snapshots``.  Also the pieces of
its study: Isomap or t-SNE instead of UMAP, k-means
instead of the mixture, the manifold and mixture steps on the raw inputs
(``raw``, its Table 1 baseline), and, which neither paper did, on the codes
of an SNNL run (``codes_from``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from .. import distributed
from ..autoencoder import encode_in_batches
from ..cluster.assign import final_clustering
from ..cluster.manifold import embed
from ..data import Dataset, load_dataset, train_and_test
from ..metrics import evaluate
from ..runs.config import N2DConfig
from ..runs.records import SeedResult
from ..runs.runner import check_output, checkpoint_path, execute
from ..train.loop import resolve_device, train_autoencoder, training_seconds


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
