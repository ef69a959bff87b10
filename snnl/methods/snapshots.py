"""N2D's metrics on the way through training: the snapshots an
``snnl n2d --snapshot-every N`` run keeps, each put through the run's own
manifold and clustering steps (``snnl snapshots``)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from .. import validate
from ..atomic import write_text
from ..autoencoder import encode_in_batches
from ..cluster.assign import final_clustering
from ..cluster.manifold import embed
from ..data import train_and_test
from ..metrics import METRIC_TABLE, evaluate
from ..runs.config import SNAPSHOT_SILHOUETTE_SAMPLE, N2DConfig
from ..runs.provenance import environment
from ..train.checkpoints import model_from_checkpoint


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
    """Mean, standard deviation and range (over scoring seeds) of the metrics
    that compare with the labels (ACC, NMI, ARI) for each snapshot scored by
    :func:`score_snapshots`."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["seed"], row["epoch"]), []).append(row)
    summary = []
    for (seed, epoch), group in sorted(groups.items()):
        entry: dict[str, object] = {"seed": seed, "epoch": epoch, "scorings": len(group)}
        for metric in (m.name for m in METRIC_TABLE if m.reads == "labels"):
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
