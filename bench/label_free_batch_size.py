"""Label-free SNNL against the batch size: ACC and epoch time, side by side.

    python -m bench.label_free_batch_size --train 10000 --epochs 20 --batch-sizes 256,1024,4096 \
        --json bench/results/label-free-batch-size-cpu-xeon-2core.json

Trains ``--config`` (default ``snnl-neighbour-views``) on the first
``--train`` Fashion-MNIST training images at each batch size with the same
seed and learning rate, encodes the 10,000 test images and clusters them
with k-means (the pipeline's protocol: 10 restarts), and records ACC / NMI
and the median epoch time.  Contrastive objectives usually gain from large
batches (more negatives per positive), and large batches are where the
blocked and fused loss paths matter.  No label is used before the metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from snnl.autoencoder import encode_in_batches
from snnl.cluster.kmeans import kmeans
from snnl.data import load_splits
from snnl.metrics import evaluate
from snnl.runs.provenance import environment
from snnl.train.config import preset
from snnl.train.loop import train_autoencoder

from .measure import write_new_json


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.label_free_batch_size", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="snnl-neighbour-views")
    parser.add_argument("--train", type=int, default=10_000, help="training images (the first N)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here (a new file)")
    args = parser.parse_args()
    if args.json and os.path.exists(args.json):
        raise SystemExit(f"{args.json} exists: choose another --json")
    train, test = load_splits("fashion-mnist", ("train", "test"))
    x = train.x[: args.train]
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        config = preset(args.config, batch_size=batch_size, epochs=args.epochs)
        started = time.perf_counter()
        result = train_autoencoder(
            x, None, config, seed=args.seed, device="cpu", progress="lines", image_shape=train.image_shape
        )
        seconds = time.perf_counter() - started
        codes = encode_in_batches(result.model, test.x).numpy()
        clusters = kmeans(codes, test.n_classes, seed=args.seed).labels
        metrics = evaluate(codes, test.y, clusters, silhouette_sample=2000, seed=args.seed)
        row = {
            "batch_size": batch_size,
            "acc": metrics["acc"],
            "nmi": metrics["nmi"],
            "ari": metrics["ari"],
            "epoch_seconds_median": statistics.median(h["seconds"] for h in result.history),
            "train_seconds": seconds,
            "final_loss": result.history[-1]["loss"],
        }
        rows.append(row)
        print(
            f"batch {batch_size:>5}: ACC {row['acc']:.4f} NMI {row['nmi']:.4f} "
            f"epoch {row['epoch_seconds_median']:.1f} s (median)",
            flush=True,
        )
    if args.json:
        write_new_json(
            args.json,
            {
                "config": args.config,
                "train_images": args.train,
                "epochs": args.epochs,
                "seed": args.seed,
                "rows": rows,
                "environment": environment(__import__("torch").device("cpu")),
            },
        )


if __name__ == "__main__":
    main()
