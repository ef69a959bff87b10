"""Is scoring an N2D snapshot repeatable, and what moves it?  (Run from the
repository root, after the run directory runs/fmnist-n2d exists.)

    OMP_NUM_THREADS=1 python thread_count_check.py 2   # two scorings in one process
    OMP_NUM_THREADS=2 python thread_count_check.py 1

Encodes the epoch-150 snapshot, embeds it with the run's UMAP (seed 0),
clusters with its mixture and prints a hash of the embedding with ACC / NMI.
"threads=" is torch.get_num_threads() read after UMAP, which raises torch's
OpenMP pool to the core count (numba's doing) whatever OMP_NUM_THREADS says:
it reads 2 in every line; the run's OMP_NUM_THREADS is in the output file's
header.  (This docstring was added after the runs; the code is as run.)
"""
import sys, json, hashlib, time, numpy as np, torch
from snnl.train import model_from_checkpoint
from snnl.data import train_and_test
from snnl.n2d import N2DConfig, encode_in_batches, final_clustering
from snnl.manifold import embed
from snnl.metrics import evaluate
c = N2DConfig.from_dict(json.load(open('runs/fmnist-n2d/config.json')))
data = train_and_test(c.dataset, data_dir=c.data_dir, **c.dataset_options)
codes = encode_in_batches(model_from_checkpoint('runs/fmnist-n2d/checkpoints/seed0-epoch0150.pt'), data.x).numpy()
for rep in range(int(sys.argv[1])):
    t = time.perf_counter()
    points, _ = embed(codes, 10, c.manifold, seed=0)
    h = hashlib.sha1(points.tobytes()).hexdigest()[:10]
    clusters = final_clustering(points, 10, c.cluster, 0, c.kmeans_backend)
    m = evaluate(points, data.y, clusters, silhouette_sample=None, seed=0)
    print(f"threads={torch.get_num_threads()} rep={rep} emb={h} acc={m['acc']:.4f} nmi={m['nmi']:.4f} ({time.perf_counter()-t:.0f}s)", flush=True)
