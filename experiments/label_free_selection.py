"""Choose label-free settings without the labels they are reported with.

A label-free preset is only real if its settings can be chosen without
labels.  This driver trains one candidate setting on a dataset's *training*
images (no label reaches training), and after every ``--score-every``
epochs clusters the training codes with k-means and records what a user
without labels can compute:

- the k-means partition of the training codes (``partitions.npz``), from
  which ``agree`` computes the **seed agreement**: the adjusted Rand index
  between the partitions that two seeds of one candidate reach (a setting
  whose clusters are found again from another initialisation is one whose
  clusters are in the data, not in the seed);
- the silhouette of that partition (cosine, on a sample) and the k-means
  inertia.

The test split is never loaded.  ``--diagnostic-labels`` also scores the
partition against the *training* labels (ACC, NMI): a check of whether the
label-free criterion tracks clustering quality, never an input to the
choice; ``agree`` prints it beside the criterion so the two can be compared.

    python -m experiments.label_free_selection train --candidate fixed_temperature=1.0 --seed 100 \\
        --epochs 20 --score-every 5 --out selection/t1-seed100
    python -m experiments.label_free_selection agree selection/t1-seed100 selection/t1-seed101 ...

Each ``--candidate`` is a set of ``TrainConfig`` fields (``name=value``
pairs separated by commas) applied to ``--config``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from ._fields import parse_fields


def score_training_codes(model, train, *, seed: int, n_clusters: int, diagnostic: bool, silhouette_sample: int):
    """The k-means partition of the training codes and its label-free scores
    (plus ACC / NMI against the training labels when ``diagnostic``)."""
    from sklearn.metrics import normalized_mutual_info_score, silhouette_score

    from snnl.autoencoder import encode_in_batches
    from snnl.cluster.kmeans import kmeans
    from snnl.metrics import clustering_accuracy

    codes = encode_in_batches(model, train.x).numpy()
    clustering = kmeans(codes, n_clusters, seed=seed)
    scores = {
        "silhouette": float(
            silhouette_score(
                codes,
                clustering.labels,
                metric="cosine",
                sample_size=min(silhouette_sample, len(codes)),
                random_state=seed,
            )
        ),
        "inertia": float(clustering.inertia),
    }
    if diagnostic:
        scores["train_label_acc"] = clustering_accuracy(train.y, clustering.labels)
        scores["train_label_nmi"] = float(normalized_mutual_info_score(train.y, clustering.labels))
    return clustering.labels.astype(np.int16), scores


def train_candidate(args) -> None:
    import torch

    from snnl.data import load_dataset
    from snnl.runs.provenance import environment
    from snnl.train.checkpoints import model_from_checkpoint, snapshot_path
    from snnl.train.config import preset, with_pseudo_label_clusters
    from snnl.train.loop import train_autoencoder

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose another --out (nothing is overwritten)")
    candidate = args.candidate or {}
    train = load_dataset(args.dataset, "train")  # the training split only: the test split is never read
    n_clusters = args.clusters or train.n_classes
    config = with_pseudo_label_clusters(preset(args.config, epochs=args.epochs, **candidate), n_clusters)
    out.mkdir(parents=True)
    partitions: dict[str, np.ndarray] = {}
    scored: list[dict] = []

    def score(model, epochs_done: int):
        labels, scores = score_training_codes(
            model,
            train,
            seed=args.seed,
            n_clusters=n_clusters,
            diagnostic=args.diagnostic_labels,
            silhouette_sample=args.silhouette_sample,
        )
        partitions[f"epoch{epochs_done:04d}"] = labels
        scored.append({"epoch": epochs_done, **scores})
        print(f"{out.name} epoch {epochs_done}: {scores}", flush=True)

    with tempfile.TemporaryDirectory(prefix="snnl-selection-") as folder:
        checkpoint = Path(folder) / "model.pt"

        def on_epoch_end(record):
            done = record["epoch"] + 1
            if done % args.score_every == 0 and done < config.epochs:
                score(model_from_checkpoint(snapshot_path(checkpoint, done)), done)

        started = time.perf_counter()
        result = train_autoencoder(
            train.x,
            None,  # no label reaches training
            config,
            seed=args.seed,
            device="cpu",
            progress=False,
            image_shape=train.image_shape,
            checkpoint_path=checkpoint,
            snapshot_every=args.score_every,
            on_epoch_end=on_epoch_end,
        )
        score(result.model, config.epochs)
    np.savez_compressed(out / "partitions.npz", **partitions)
    record = {
        "dataset": args.dataset,
        "split": "train",
        "config": config.to_dict(),
        "candidate": candidate,
        "seed": args.seed,
        "n_clusters": n_clusters,
        "diagnostic_labels": args.diagnostic_labels,
        "scored": scored,
        "epoch_seconds_median": statistics.median(h["seconds"] for h in result.history),
        "seconds": time.perf_counter() - started,
        "command": " ".join(["python -m experiments.label_free_selection", *sys.argv[1:]]),
        "environment": environment(torch.device("cpu")),
    }
    with open(out / "run.json", "x") as f:
        json.dump(record, f, indent=1)


def agreement(runs: list[Path]) -> list[dict]:
    """Per candidate and scored epoch: the seed agreement (mean ARI over pairs
    of seeds), the mean silhouette, and the diagnostic scores where recorded."""
    from sklearn.metrics import adjusted_rand_score

    by_candidate: dict[str, list[tuple[dict, dict]]] = {}
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        with np.load(run / "partitions.npz") as stored:
            partitions = {key: stored[key] for key in stored.files}
        by_candidate.setdefault(json.dumps(record["candidate"], sort_keys=True), []).append((record, partitions))
    rows = []
    for candidate, members in by_candidate.items():
        epochs = sorted(set.intersection(*(set(p) for _, p in members)))
        for key in epochs:
            epoch = int(key.removeprefix("epoch"))
            scores = [next(s for s in r["scored"] if s["epoch"] == epoch) for r, _ in members]
            pairs = [adjusted_rand_score(a[key], b[key]) for (_, a), (_, b) in combinations(members, 2)]
            row = {
                "candidate": json.loads(candidate),
                "epoch": epoch,
                "seeds": [r["seed"] for r, _ in members],
                "seed_agreement": statistics.mean(pairs) if pairs else None,
                "silhouette": statistics.mean(s["silhouette"] for s in scores),
            }
            for name in ("train_label_acc", "train_label_nmi"):
                if all(name in s for s in scores):
                    row[name] = statistics.mean(s[name] for s in scores)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.label_free_selection", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one candidate and score its training codes on the way")
    train.add_argument("--dataset", default="fashion-mnist")
    train.add_argument(
        "--config",
        default="snnl-label-free",
        help="the preset the candidate changes (the selection's runs changed snnl-umap-neighbour-views, since "
        "retired: snnl-label-free with fixed_temperature=0.5,pseudo_labels_from=None,epochs=20)",
    )
    train.add_argument("--candidate", type=parse_fields, help="TrainConfig fields, e.g. fixed_temperature=1.0")
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--score-every", type=int, default=5, help="score the training codes every N epochs (default 5)")
    train.add_argument("--clusters", type=int, help="k (default: the dataset's number of classes)")
    train.add_argument("--silhouette-sample", type=int, default=5000, help="points the silhouette is estimated on")
    train.add_argument(
        "--diagnostic-labels",
        action="store_true",
        help="also score the partitions against the training labels (a check of the criterion, not a choice)",
    )
    train.add_argument("--out", required=True, help="a new directory for run.json and partitions.npz")
    agree = commands.add_parser("agree", help="seed agreement of trained candidates, per scored epoch")
    agree.add_argument("runs", nargs="+", type=Path)
    agree.add_argument("--json", help="also write the rows here (a new file)")
    args = parser.parse_args()
    if args.command == "train":
        if args.score_every < 1:
            raise SystemExit(f"--score-every must be a positive number of epochs, got {args.score_every}")
        train_candidate(args)
        return
    if args.json and os.path.exists(args.json):
        raise SystemExit(f"{args.json} exists: choose another --json")
    rows = agreement(args.runs)
    for row in rows:
        diagnostic = "".join(
            f"  {name.removeprefix('train_label_')} {row[name]:.3f}"
            for name in ("train_label_acc", "train_label_nmi")
            if name in row
        )
        agreed = "   -  " if row["seed_agreement"] is None else f"{row['seed_agreement']:.3f}"
        print(
            f"{json.dumps(row['candidate']):50s} epoch {row['epoch']:3d}  agreement {agreed}  "
            f"silhouette {row['silhouette']:.3f}{diagnostic}"
        )
    if args.json:
        with open(args.json, "x") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
