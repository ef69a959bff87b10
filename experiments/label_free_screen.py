"""Label-free SNNL variants side by side on a Fashion-MNIST subset: ACC, NMI, epoch time.

    python -m experiments.label_free_screen --variant partners=1 --variant partners=3 --seeds 0,1,2 \
        --json bench/results/label-free-partners-cpu-epyc-2core.json

Each ``--variant`` is a set of ``TrainConfig`` fields (``name=value`` pairs
separated by commas) applied to ``--config`` (default ``snnl-label-free``;
the screens in results/README.md ran on label-free presets since retired,
each of which is ``snnl-label-free`` with the fields listed there).  Every variant trains on the first
``--train`` training images with each seed (seeds in the inner loop, so that
variants alternate in time on a busy machine), encodes the 10,000 test
images and clusters them with k-means (the pipeline's protocol: 10
restarts); no label is used before the metrics.  A screen, not the Table IV
protocol: a tenth of the training set, and one subset, so differences of a
few hundredths between single seeds are within the seeds' own spread.

``--score-every N`` also scores the model after every N epochs (kept as a
snapshot in a temporary folder), as if training had stopped there: how the
metrics move over training.  ``--train 60000`` trains on the whole training
set, Table IV's protocol for one seed:

    python -m experiments.label_free_screen --train 60000 --epochs 12 --score-every 1 --seeds 0 \
        --json bench/results/label-free-epochs-seed0-cpu-xeon-2core.json     # and --seeds 1 (seed1), side by side

``--with-test`` trains on the 10,000 test images as well (without their
labels), N2D's protocol of clustering the images it trained on, and still
scores the test images:

    python -m experiments.label_free_screen --train 60000 --with-test --epochs 12 --score-every 1 --seeds 0 \
        --json bench/results/label-free-epochs-with-test-seed0-cpu-xeon-2core.json   # and --seeds 1
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import _cli
from bench.measure import write_new_json
from snnl.autoencoder import encode_in_batches
from snnl.cluster.kmeans import kmeans
from snnl.data import load_splits
from snnl.metrics import evaluate
from snnl.runs.provenance import environment
from snnl.train.checkpoints import model_from_checkpoint, snapshot_path
from snnl.train.config import preset, with_pseudo_label_clusters
from snnl.train.loop import train_autoencoder

from ._fields import parse_fields


def parse_variant(text: str) -> dict:
    """``partners=3,batch_size=128`` -> {"partners": 3, "batch_size": 128}."""
    return parse_fields(text, "--variant")


def score(model, test, seed: int) -> dict:
    """ACC, NMI and ARI of k-means on ``model``'s codes of the test images."""
    codes = encode_in_batches(model, test.x).numpy()
    clusters = kmeans(codes, test.n_classes, seed=seed).labels
    metrics = evaluate(codes, test.y, clusters, silhouette_sample=2000, seed=seed)
    return {m: metrics[m] for m in ("acc", "nmi", "ari")}


def train_and_score(x, config, seed: int, test, *, score_every: int | None, progress, label: str):
    """Train ``config`` on ``x`` with ``seed`` and score the test codes: (the
    training result, its seconds, the scores after every ``score_every``
    epochs before the last, from snapshots in a temporary folder)."""
    on_the_way: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="snnl-screen-") as folder:
        checkpoint = Path(folder) / "model.pt"

        def score_snapshot(record):
            done = record["epoch"] + 1
            if score_every and done % score_every == 0 and done < config.epochs:
                on_the_way.append(
                    {"epoch": done, **score(model_from_checkpoint(snapshot_path(checkpoint, done)), test, seed)}
                )
                progress(f"{label} epoch {done}: {on_the_way[-1]}")

        started = time.perf_counter()
        result = train_autoencoder(
            x,
            None,
            config,
            seed=seed,
            device="cpu",
            progress=False,
            image_shape=(28, 28),
            checkpoint_path=checkpoint if score_every else None,
            snapshot_every=score_every,
            on_epoch_end=score_snapshot,
        )
        seconds = time.perf_counter() - started  # with the scoring on the way, if any
    return result, seconds, on_the_way


def screen(
    config_name: str,
    variants: list[dict],
    seeds,
    train_images: int,
    epochs: int,
    progress=print,
    score_every: int | None = None,
    with_test: bool = False,
) -> list[dict]:
    """One row per variant and seed (see the module docstring)."""
    # all checked before training; a variant may set its own epochs
    configs = [preset(config_name, **{"epochs": epochs, **variant}) for variant in variants]
    train, test = load_splits("fashion-mnist", ("train", "test"))
    configs = [with_pseudo_label_clusters(config, test.n_classes) for config in configs]
    x = train.x[:train_images]
    if with_test:  # N2D's protocol: the images clustered are trained on too (without their labels)
        x = np.concatenate([x, test.x])
    rows = []
    for variant, config in zip(variants, configs):
        for seed in seeds:
            result, seconds, on_the_way = train_and_score(
                x, config, seed, test, score_every=score_every, progress=progress, label=f"{variant} seed {seed}"
            )
            row = {
                "variant": variant,
                "seed": seed,
                **score(result.model, test, seed),
                "epoch_seconds_median": statistics.median(h["seconds"] for h in result.history),
                "train_seconds": seconds,
            }
            if score_every:
                row["on_the_way"] = on_the_way
            rows.append(row)
            progress(
                f"{variant} seed {seed}: ACC {row['acc']:.4f} NMI {row['nmi']:.4f} "
                f"epoch {row['epoch_seconds_median']:.1f} s (median)"
            )
    return rows


def main() -> None:
    parser = _cli.parser("experiments.label_free_screen", __doc__)
    parser.add_argument("--config", default="snnl-label-free")
    parser.add_argument("--variant", action="append", type=parse_variant, help="TrainConfig fields, e.g. partners=3")
    parser.add_argument("--train", type=int, default=10_000, help="training images (the first N)")
    parser.add_argument("--epochs", type=int, default=None, help="(default: the configuration's)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--score-every", type=int, help="also score the model after every N epochs")
    parser.add_argument(
        "--with-test",
        action="store_true",
        help="train on the test images too (their labels unused), as N2D's protocol does; they are still scored",
    )
    args = _cli.parse(parser)
    epochs = args.epochs or preset(args.config).epochs
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variant or [{}]
    if args.score_every is not None and args.score_every < 1:
        raise SystemExit(f"--score-every must be a positive number of epochs, got {args.score_every}")
    rows = screen(
        args.config,
        variants,
        seeds,
        args.train,
        epochs,
        progress=lambda line: print(line, flush=True),
        score_every=args.score_every,
        with_test=args.with_test,
    )
    summary = []
    for variant in variants:
        mine = [row for row in rows if row["variant"] == variant]
        summary.append(
            {
                "variant": variant,
                **{m: statistics.mean(row[m] for row in mine) for m in ("acc", "nmi")},
                **{f"{m}_std": statistics.pstdev(row[m] for row in mine) for m in ("acc", "nmi")},
            }
        )
        print(f"{variant}: ACC {summary[-1]['acc']:.4f} +- {summary[-1]['acc_std']:.4f}, NMI {summary[-1]['nmi']:.4f}")
    if args.json:
        write_new_json(
            args.json,
            {
                "config": args.config,
                "train_images": args.train,
                "epochs": epochs,
                "seeds": seeds,
                "score_every": args.score_every,
                "with_test": args.with_test,
                "rows": rows,
                "summary": summary,
                "environment": environment(__import__("torch").device("cpu")),
            },
        )


if __name__ == "__main__":
    main()
