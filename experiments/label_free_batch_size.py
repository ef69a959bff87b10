"""Label-free SNNL against the batch size: ACC and epoch time, side by side.

    python -m experiments.label_free_batch_size --train 10000 --epochs 20 --batch-sizes 256,1024,4096 \
        --json bench/results/label-free-batch-size-cpu-xeon-2core.json
    python -m experiments.label_free_batch_size --config snnl-umap-neighbour-views --learning-rate-scaling none,sqrt \
        --seeds 0,1,2 --json bench/results/label-free-batch-size-lr-cpu-xeon-2core.json

Trains ``--config`` (default ``snnl-label-free``; the runs in results/README.md
used presets since retired, listed there as its fields) on the first
``--train`` Fashion-MNIST training images at each batch size with the same
seed and learning rate, encodes the 10,000 test images and clusters them
with k-means (the pipeline's protocol: 10 restarts), and records ACC / NMI
and the median epoch time.  ``--learning-rate-scaling sqrt`` multiplies
the configuration's learning rate by sqrt(batch size / its batch size), the
usual rule for Adam (a larger batch takes fewer, less noisy steps an epoch),
so that the larger batches are not simply trained for fewer steps at the same
rate; ``none,sqrt`` runs both side by side (the configuration's own batch
size once).  Contrastive objectives usually gain from large
batches (more negatives per positive), and large batches are where the
blocked and fused loss paths matter.  No label is used before the metrics.
"""

from __future__ import annotations

import math

from bench import _cli
from bench.measure import write_new_json
from snnl import validate
from snnl.runs.provenance import environment
from snnl.train.config import preset

from .label_free_screen import screen

LR_SCALING = ("none", "sqrt")


def variant(config_name: str, batch_size: int, scaling: str) -> dict:
    """The TrainConfig fields of one batch size: the batch size, and the
    learning rate, scaled from the configuration's with ``scaling="sqrt"``."""
    validate.choice("--learning-rate-scaling", scaling, LR_SCALING)
    base = preset(config_name)
    factor = math.sqrt(batch_size / base.batch_size) if scaling == "sqrt" else 1.0
    return {"batch_size": batch_size, "learning_rate": base.learning_rate * factor}


def main() -> None:
    parser = _cli.parser("experiments.label_free_batch_size", __doc__)
    parser.add_argument("--config", default="snnl-label-free")
    parser.add_argument("--train", type=int, default=10_000, help="training images (the first N)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--learning-rate-scaling",
        default="none",
        help="none: the configuration's learning rate at every batch size; sqrt: scaled by sqrt(batch / its batch); "
        "both: none,sqrt",
    )
    args = _cli.parse(parser)
    variants = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for scaling in args.learning_rate_scaling.split(","):
            try:
                fields = variant(args.config, batch_size, scaling)
            except ValueError as error:
                raise SystemExit(str(error)) from None
            if fields not in variants:  # the configuration's own batch size is the same under every scaling
                variants.append(fields)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = screen(args.config, variants, seeds, args.train, args.epochs, progress=lambda s: print(s, flush=True))
    if args.json:
        write_new_json(
            args.json,
            {
                "config": args.config,
                "train_images": args.train,
                "epochs": args.epochs,
                "seeds": seeds,
                "learning_rate_scaling": args.learning_rate_scaling,
                "rows": [{**row.pop("variant"), **row} for row in rows],
                "environment": environment(__import__("torch").device("cpu")),
            },
        )


if __name__ == "__main__":
    main()
