"""N2D: the text-format datasets, manifold learners, final clustering, pipeline,
``--codes-from``, the estimator, the backend report and early stopping."""

import bz2
import json
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from snnl.backends import backend_report, format_report
from snnl.choices import UMAP_BACKENDS
from snnl.cli import main
from snnl.config import preset
from snnl.data import DatasetNotFoundError, load_dataset, sources, train_and_test
from snnl.manifold import ManifoldConfig, embed
from snnl.metrics import clustering_accuracy
from snnl.n2d import N2D, N2D_AUTOENCODER, N2DConfig, final_clustering, run_n2d
from snnl.optional import cuml_status, umap_learn_status
from snnl.pipeline import ExperimentConfig, run_experiment
from snnl.train import train_autoencoder

# Isomap on these tests' few points finds a disconnected neighbour graph and
# completes it (scikit-learn and scipy say so); the tests check its output.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of connected components:UserWarning"),
    pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning"),
]

HAS_UMAP = umap_learn_status()[0]


@pytest.fixture(autouse=True)
def _no_system_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SNNL_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", ())


def test_usps_libsvm_bz2(tmp_path):
    lines = ["1 1:-1 2:0.5 256:1", "10 3:0.25"]
    (tmp_path / "usps.bz2").write_bytes(bz2.compress("\n".join(lines).encode()))
    (tmp_path / "usps.t").write_text("5 1:1\n")
    train = load_dataset("usps", "train", data_dir=tmp_path)
    assert train.x.shape == (2, 256) and train.y.tolist() == [0, 9] and train.image_shape == (16, 16)
    assert train.x[0, 0] == 0.0 and train.x[0, 1] == 0.75 and train.x[0, 255] == 1.0 and train.x[1, 0] == 0.5
    assert len(train_and_test("usps", data_dir=tmp_path)) == 3


def test_usps_bad_line(tmp_path):
    (tmp_path / "usps").write_text("1 1:-1\nnot a line\n")
    with pytest.raises(ValueError, match=r"usps:2: not a LIBSVM line"):
        load_dataset("usps", "train", data_dir=tmp_path)


def test_pendigits_csv(tmp_path):
    folder = tmp_path / "pendigits"
    folder.mkdir()
    (folder / "pendigits.tes").write_text("0,100," + ",".join(["50"] * 14) + ",7\n" + ",".join(["1"] * 16) + ",0\n")
    test = load_dataset("pendigits", "test", data_dir=tmp_path)
    assert test.x.shape == (2, 16) and test.y.tolist() == [7, 0] and test.x[0, 1] == 1.0
    (folder / "pendigits.tra").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="expected 17 comma-separated columns"):
        load_dataset("pendigits", "train", data_dir=tmp_path)


def test_har_folder(tmp_path):
    root = tmp_path / "UCI HAR Dataset" / "train"
    root.mkdir(parents=True)
    rows = np.linspace(-1, 1, 3 * 561).reshape(3, 561)
    np.savetxt(root / "X_train.txt", rows)
    (root / "y_train.txt").write_text("1\n6\n3\n")
    train = load_dataset("har", "train", data_dir=tmp_path)
    assert train.x.shape == (3, 561) and train.y.tolist() == [0, 5, 2]
    assert train.x.min() == 0.0 and train.x.max() == 1.0 and train.classes[5] == "laying"
    (root / "y_train.txt").write_text("1\n7\n3\n")
    with pytest.raises(ValueError, match="HAR activities must be 1-6"):
        load_dataset("har", "train", data_dir=tmp_path)


def test_missing_text_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)har \(test\).*X_test\.txt.*archive\.ics\.uci\.edu"):
        load_dataset("har", "test", data_dir=tmp_path)


def separated_blobs(n=600, k=4, d=6, seed=0):
    return make_blobs(n_samples=n, centers=k, n_features=d, cluster_std=0.3, random_state=seed)


@pytest.mark.parametrize("method", ["isomap", "tsne", "none"])
def test_manifold_embeddings(method):
    x, y = separated_blobs()
    points, backend = embed(x, 4, ManifoldConfig(method=method), seed=0)
    expected_dims = {"isomap": 4, "tsne": 2, "none": 6}[method]
    assert points.shape == (600, expected_dims) and points.dtype == np.float32
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")
@pytest.mark.parametrize("backend", [b for b in UMAP_BACKENDS if b != "auto"])
def test_each_umap_backend_recovers_blobs(backend):
    # cuML's UMAP runs where it is installed (GPU machines); elsewhere its case is skipped
    if backend == "cuml" and not cuml_status()[0]:
        pytest.skip("cuML is not installed (RAPIDS, CUDA only)")
    x, y = separated_blobs()
    points, used = embed(x, 4, ManifoldConfig(umap_backend=backend), seed=0)
    assert used == backend and points.shape == (600, 4)
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99
    # large data: fit on a sample, transform everything
    points, used = embed(x, 4, ManifoldConfig(umap_backend=backend, fit_sample=200), seed=0)
    assert used == f"{backend} (fit on 200)" and points.shape == (600, 4)
    assert clustering_accuracy(y, final_clustering(points, 4, "gmm", 0)) >= 0.99


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")
def test_umap_leaves_torch_threads_as_they_were():
    # numba, under umap-learn, resets the OpenMP pool to its own thread count
    # (the cores) the first time it runs in a process (hence a fresh one), and
    # torch, told its count only by OMP_NUM_THREADS, follows the pool: torch
    # work after UMAP (the next seed's training) must keep the user's count
    import subprocess
    import sys

    script = (
        "import numpy as np, torch\n"
        "from snnl.manifold import ManifoldConfig, embed\n"
        "x = np.random.default_rng(0).normal(size=(2000, 10)).astype(np.float32)\n"
        "embed(x, 4, ManifoldConfig(umap_backend='umap-learn'), seed=0)\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        # the user's count from OMP_NUM_THREADS; numba's above it even on a 1-core machine
        env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]


def test_manifold_errors():
    with pytest.raises(ValueError, match="manifold must be one of"):
        ManifoldConfig(method="lle")
    with pytest.raises(ValueError, match="at most 3 dimensions"):
        embed(np.random.default_rng(0).normal(size=(50, 5)), 10, ManifoldConfig(method="tsne", n_components=10))
    with pytest.raises(ImportError, match="cuML"):
        embed(np.zeros((10, 2)), 2, ManifoldConfig(umap_backend="cuml"))


def test_final_clustering_methods_agree_on_blobs():
    x, y = separated_blobs(seed=3)
    gmm, km = final_clustering(x, 4, "gmm", 0), final_clustering(x, 4, "kmeans", 0)
    assert clustering_accuracy(gmm, km) >= 0.99 and clustering_accuracy(y, gmm) >= 0.99
    with pytest.raises(ValueError, match="cluster must be one of"):
        final_clustering(x, 4, "dbscan", 0)


def n2d_config(**changes):
    base = dict(
        dataset="digits",
        autoencoder=N2D_AUTOENCODER.replace(epochs=2, hidden=(64, 64, 128)),
        manifold=ManifoldConfig(method="isomap"),
        projection="pca",
    )
    return N2DConfig(**{**base, **changes})


def test_run_n2d_on_digits(tmp_path):
    result = run_n2d(n2d_config(), tmp_path / "n2d", progress=False)
    assert result.config.n_clusters == 10 and result.config.autoencoder.code_dim == 10
    metrics = json.loads((tmp_path / "n2d" / "metrics.json").read_text())
    assert metrics["config"]["method"] == "n2d" and metrics["config"]["autoencoder"]["output_activation"] == "linear"
    assert set(metrics["seeds"][0]["seconds"]) == {"train", "encode", "manifold", "cluster", "metrics", "figures"}
    arrays = np.load(tmp_path / "n2d" / "embeddings.npz")
    assert arrays["codes"].shape == (1797, 10) and arrays["z"].shape == (1797, 10) and arrays["y"].shape == (1797,)
    assert result.summary["mean"]["acc"] > 0.3


def test_n2d_on_the_codes_of_an_snnl_run(tmp_path):
    fast = preset("snnl-5", hidden=(64, 64, 128), code_dim=10, epochs=2, batch_size=128)
    run_experiment(
        ExperimentConfig(train=fast, kmeans_restarts=1, projection="none"), tmp_path / "snnl", progress=False
    )
    result = run_n2d(
        n2d_config(codes_from=str(tmp_path / "snnl"), manifold=ManifoldConfig(method="none")),
        tmp_path / "after",
        progress=False,
    )
    assert result.config.label == "snnl codes + none + gmm"
    assert set(json.loads((tmp_path / "after" / "metrics.json").read_text())["seeds"][0]["seconds"]) == {
        "manifold",
        "cluster",
        "metrics",
        "figures",
    }
    assert len(result.labels) == 450 and result.summary["mean"]["acc"] > 0.3
    with pytest.raises(FileNotFoundError, match="finished `snnl run`"):
        run_n2d(n2d_config(codes_from=str(tmp_path / "nothing")))


def test_n2d_on_raw_inputs(tmp_path):
    result = run_n2d(n2d_config(raw=True), tmp_path / "raw", progress=False)
    assert result.config.label == "raw inputs + isomap + gmm"
    metrics = json.loads((tmp_path / "raw" / "metrics.json").read_text())
    assert (
        set(metrics["seeds"][0]["seconds"]) == {"manifold", "cluster", "metrics", "figures"}
        and metrics["config"]["raw"]
    )
    assert not (tmp_path / "raw" / "checkpoints").exists()
    arrays = np.load(tmp_path / "raw" / "embeddings.npz")
    assert "codes" not in arrays and arrays["z"].shape == (1797, 10)
    assert result.summary["mean"]["acc"] > 0.5
    with pytest.raises(ValueError, match="raw and codes_from exclude each other"):
        n2d_config(raw=True, codes_from=str(tmp_path / "raw"))


def test_cli_n2d_and_backends(tmp_path, capsys):
    assert (
        main(
            [
                "n2d",
                "--epochs",
                "1",
                "--manifold",
                "none",
                "--cluster",
                "kmeans",
                "--projection",
                "none",
                "--quiet",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert "digits n2d (none + kmeans)" in capsys.readouterr().out
    assert main(["backends"]) == 0
    printed = capsys.readouterr().out
    for step in ("SNNL loss", "k-means", "UMAP", "silhouette", "Gaussian mixture"):
        assert step in printed


def test_backend_report_names_what_auto_runs():
    # the report is read by users deciding what to install: it must name the
    # backends that "auto" really resolves to on this machine
    import torch

    from snnl.cluster import resolve_kmeans_backend
    from snnl.loss.registry import resolve
    from snnl.optional import resolve_umap_backend

    rows = {row["step"]: row for row in backend_report()}
    assert rows["SNNL loss (backend='auto')"]["backend"] == resolve("auto", torch.zeros(4, 2)).name
    kmeans_row = rows["k-means (backend='auto')"]["backend"]
    assert kmeans_row.startswith({"sklearn": "scikit-learn", "faiss": "faiss"}[resolve_kmeans_backend("auto")])
    umap_row = rows["UMAP"]["backend"]
    if HAS_UMAP or umap_row != "unavailable":
        assert umap_row.lower().startswith(resolve_umap_backend("auto").lower())
    assert "cuML has no Gaussian mixture" in format_report(list(rows.values()))


def test_n2d_estimator_on_blobs():
    x, y = separated_blobs(n=400)
    model = N2D(n_clusters=4, epochs=5, batch_size=64, manifold="isomap", random_state=0)
    labels = model.fit_predict(x)
    assert labels.shape == (400,) and model.codes_.shape == (400, 4) and model.embedding_.shape == (400, 4)
    assert clustering_accuracy(y, labels) >= 0.99
    assert model.score_against(y)["acc"] == clustering_accuracy(y, labels)
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 1"):
        N2D(n_clusters=0).fit(x)


def test_early_stopping_and_resume_after_it(tmp_path):
    x = np.random.default_rng(0).random((64, 8)).astype(np.float32)
    config = N2D_AUTOENCODER.replace(epochs=50, hidden=(8,), code_dim=2, batch_size=16, learning_rate=1e-12, patience=2)
    result = train_autoencoder(x, None, config, progress=False, checkpoint_path=tmp_path / "c.pt")
    assert len(result.history) < 50
    again = train_autoencoder(x, None, config, progress=False, checkpoint_path=tmp_path / "c.pt", resume=True)
    assert len(again.history) == len(result.history)


@pytest.mark.slow
def test_snapshots_are_scored_like_the_run(tmp_path, capsys):
    from snnl.cli import main

    out = tmp_path / "n2d"
    assert (
        main(
            [
                "n2d",
                "--epochs",
                "4",
                "--snapshot-every",
                "2",
                "--manifold",
                "isomap",
                "--projection",
                "none",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    scores = tmp_path / "snapshots.json"
    assert main(["snapshots", str(out), "--output", str(scores)]) == 0
    written = json.loads(scores.read_text())
    rows = written["snapshots"]
    assert [(r["seed"], r["epoch"]) for r in rows] == [(0, 2), (0, 4)]
    assert (
        written["environment"]["torch_threads"] == torch.get_num_threads() and "snnl_commit" in written["environment"]
    )
    # the last snapshot is the trained model: the same clustering as the run's own
    final = json.loads((out / "metrics.json").read_text())["seeds"][0]["metrics"]
    assert rows[-1]["acc"] == pytest.approx(final["acc"]) and rows[-1]["nmi"] == pytest.approx(final["nmi"])
    # several scorings per snapshot: the training seed's is the default's, and each snapshot is summarised
    several = tmp_path / "several.json"
    assert main(["snapshots", str(out), "--output", str(several), "--scoring-seeds", "0,7"]) == 0
    written = json.loads(several.read_text())
    assert [(r["epoch"], r["scoring_seed"]) for r in written["snapshots"]] == [(2, 0), (2, 7), (4, 0), (4, 7)]
    assert [r["acc"] for r in written["snapshots"] if r["scoring_seed"] == 0] == [r["acc"] for r in rows]
    first = written["by_snapshot"][0]
    assert (first["epoch"], first["scorings"]) == (2, 2)
    assert first["acc"]["mean"] == pytest.approx(np.mean([r["acc"] for r in written["snapshots"][:2]]))
    assert main(["snapshots", str(out), "--output", str(tmp_path / "bad.json"), "--scoring-seeds", "3,3"]) == 2
    assert "seeds must not repeat" in capsys.readouterr().err and not (tmp_path / "bad.json").exists()
    assert main(["snapshots", str(out), "--output", str(scores)]) == 2  # never over an existing file
    # some snapshots only; an epoch without one is refused before any scoring
    chosen = tmp_path / "chosen.json"
    assert main(["snapshots", str(out), "--output", str(chosen), "--epochs", "4"]) == 0
    assert [r["acc"] for r in json.loads(chosen.read_text())["snapshots"]] == [rows[-1]["acc"]]
    capsys.readouterr()
    assert main(["snapshots", str(out), "--output", str(tmp_path / "y.json"), "--epochs", "3,4"]) == 2
    err = capsys.readouterr().err
    assert "no snapshot of epoch(s) [3]" in err and "it has epochs [2, 4]" in err and "ACC" not in err
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal of the option's value
        main(["snapshots", str(out), "--output", str(tmp_path / "y.json"), "--epochs", "0"])
    assert refused.value.code == 2
    assert "positive epochs" in capsys.readouterr().err and not (tmp_path / "y.json").exists()
    assert main(["snapshots", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 2
    assert "config.json not found" in capsys.readouterr().err
