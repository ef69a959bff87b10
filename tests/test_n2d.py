"""N2D (snnl.methods.n2d): the run, ``--codes-from``, raw inputs, the
command, early stopping, and the scoring of snapshots."""

import json

import numpy as np
import pytest
import torch

from snnl.cli import main
from snnl.cluster.manifold import ManifoldConfig
from snnl.methods.agarap import run_experiment
from snnl.methods.n2d import run_n2d
from snnl.runs.config import N2D_AUTOENCODER, ExperimentConfig, N2DConfig
from snnl.train.config import preset
from snnl.train.loop import train_autoencoder

from .tiny import TRAINING

# Isomap on these tests' few points finds a disconnected neighbour graph and
# completes it (scikit-learn and scipy say so); the tests check its output.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The number of connected components:UserWarning"),
    pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning"),
]


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
    fast = preset("snnl-5", **TRAINING)
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
