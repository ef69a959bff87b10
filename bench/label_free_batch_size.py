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

from snnl.runs.provenance import environment

from .label_free_screen import screen
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
    variants = [{"batch_size": int(b)} for b in args.batch_sizes.split(",")]
    rows = screen(args.config, variants, [args.seed], args.train, args.epochs, progress=lambda s: print(s, flush=True))
    if args.json:
        write_new_json(
            args.json,
            {
                "config": args.config,
                "train_images": args.train,
                "epochs": args.epochs,
                "seed": args.seed,
                "rows": [{"batch_size": row.pop("variant")["batch_size"], **row} for row in rows],
                "environment": environment(__import__("torch").device("cpu")),
            },
        )


if __name__ == "__main__":
    main()
