"""Is scoring an N2D snapshot repeatable, and what moves it?

    OMP_NUM_THREADS=1 python -m experiments.scoring_repeatability runs/fmnist-n2d --epoch 150 --repeats 2
    OMP_NUM_THREADS=2 python -m experiments.scoring_repeatability runs/fmnist-n2d --epoch 150 --repeats 1

Encodes the snapshot of that epoch (seed 0) of an ``snnl n2d
--snapshot-every`` run, embeds it with the run's UMAP (seed 0), clusters with
its mixture and prints a hash of the embedding with ACC / NMI, once per
repeat.  "threads=" is torch.get_num_threads() read after UMAP, which raises
torch's OpenMP pool to the core count (numba's doing) whatever
OMP_NUM_THREADS says.  The output committed in
results/fashion-mnist/n2d-snapshots/thread-count-check.txt came from this
script's first form (kept in the history under that directory), which had the
run directory and epoch written in.
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from snnl.autoencoder import encode_in_batches
from snnl.cluster.assign import final_clustering
from snnl.cluster.manifold import embed
from snnl.data import train_and_test
from snnl.metrics import evaluate
from snnl.runs.config import N2DConfig
from snnl.train.checkpoints import model_from_checkpoint, snapshot_path


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.scoring_repeatability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, help="the --out directory of an snnl n2d --snapshot-every run")
    parser.add_argument("--epoch", type=int, required=True, help="the snapshot's epoch")
    parser.add_argument("--repeats", type=int, default=2, help="scorings in this one process")
    args = parser.parse_args()
    config = N2DConfig.from_dict(json.loads((args.run / "config.json").read_text()))
    data = train_and_test(config.dataset, data_dir=config.data_dir, **config.dataset_options)
    snapshot = snapshot_path(args.run / "checkpoints" / "seed0.pt", args.epoch)
    codes = encode_in_batches(model_from_checkpoint(snapshot), data.x).numpy()
    k = config.n_clusters or data.n_classes
    for repeat in range(args.repeats):
        started = time.perf_counter()
        points, _ = embed(codes, k, config.manifold, seed=0)
        digest = hashlib.sha1(points.tobytes()).hexdigest()[:10]
        clusters = final_clustering(points, k, config.cluster, 0, config.kmeans_backend)
        metrics = evaluate(points, data.y, clusters, silhouette_sample=None, seed=0)
        print(
            f"threads={torch.get_num_threads()} rep={repeat} emb={digest} acc={metrics['acc']:.4f} "
            f"nmi={metrics['nmi']:.4f} ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
