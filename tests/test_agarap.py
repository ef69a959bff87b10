"""Agarap & Azcarraga's experiment end to end on digits (snnl.methods.agarap):
its output directory, resume, the PCA baseline, the command, provenance."""

import json

import numpy as np
import pytest
import torch

from snnl.cli import main
from snnl.data import load_dataset
from snnl.methods.agarap import run_experiment
from snnl.runs.config import ExperimentConfig
from snnl.train.config import preset

from .tiny import TRAINING

FAST = TRAINING


def fast_config(name="snnl-5", seeds=(0,), **extra):
    return ExperimentConfig(
        dataset="digits", train=preset(name, **FAST), seeds=seeds, kmeans_restarts=2, projection="pca", **extra
    )


@pytest.mark.slow
def test_run_experiment_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    result = run_experiment(fast_config(seeds=(0, 1)), out, progress=False)
    assert capsys.readouterr().err == ""  # progress=False: silent, the figure stage too
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["train"]["name"] == "snnl-5" and metrics["config"]["seeds"] == [0, 1]
    assert [s["seed"] for s in metrics["seeds"]] == [0, 1]
    assert set(metrics["summary"]) == {"mean", "std", "best"}
    assert set(metrics["seeds"][0]["seconds"]) == {"train", "encode", "cluster", "metrics", "figures"}
    for key in ("torch", "device", "python", "command"):
        assert key in metrics["environment"]
    assert metrics["summary"]["best"]["acc"] == max(s["metrics"]["acc"] for s in metrics["seeds"])
    embeddings = np.load(out / "embeddings.npz")
    assert embeddings["z"].shape == (450, TRAINING["code_dim"]) and embeddings["y"].shape == (450,)
    assert embeddings["clusters"].shape == (450,)
    np.testing.assert_array_equal(embeddings["y"], load_dataset("digits", "test").y)
    for figure in ("training.png", "projection.png", "confusion.png"):
        assert (out / "figures" / figure).stat().st_size > 1000
    assert (out / "checkpoints" / "seed0.pt").is_file() and (out / "seeds" / "seed1.json").is_file()
    assert result.summary["mean"]["acc"] > 0.3  # far above chance (0.1) after two epochs
    with pytest.raises(FileExistsError, match="--resume"):
        run_experiment(fast_config(seeds=(0, 1)), out, progress=False)


@pytest.mark.slow
def test_resume_skips_finished_seeds(tmp_path, capsys):
    out = tmp_path / "run"
    first = run_experiment(fast_config(seeds=(0, 1)), out, progress=False)
    again = run_experiment(fast_config(seeds=(0, 1)), out, resume=True, progress=False)
    assert again.summary == first.summary
    # the recorded training time is the training's (its epochs' times), not
    # the seconds the resumed run took to load the finished checkpoint
    for before, after in zip(first.seeds, again.seeds):
        assert (
            after.seconds["train"]
            == before.seconds["train"]
            == pytest.approx(sum(epoch["seconds"] for epoch in before.history))
        )
    # seeds may change on resume: a new seed trains, the others stay as they were
    capsys.readouterr()
    more = run_experiment(fast_config(seeds=(0, 1, 2)), out, resume=True, progress="lines")
    assert [s.seed for s in more.seeds] == [0, 1, 2] and more.seeds[1].metrics == first.seeds[1].metrics
    # and it says which seed it trains, before training it
    err = capsys.readouterr().err
    assert f"seed 2: no finished record in {out / 'seeds'}, training it from the start" in err
    assert "seed 1:" not in err and err.index("seed 2: no finished record") < err.index("epoch")
    with pytest.raises(ValueError, match=r"cannot change what the trained models depend on: train.alpha"):
        run_experiment(
            fast_config(
                seeds=(0, 1),
            ).__class__(**{**fast_config().__dict__, "train": preset("snnl-5", **FAST, alpha=1.0)}),
            out,
            resume=True,
            progress=False,
        )


def test_original_pca_baseline():
    result = run_experiment(fast_config("original"), progress=False)
    assert result.seeds[0].history == [] and result.summary["mean"]["acc"] > 0.5


def test_cli_run_and_table(tmp_path, capsys):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    common = ["--epochs", "1", "--kmeans-restarts", "2", "--projection", "none", "--quiet"]
    assert main(["run", "--out", str(out_a), "--config", "baseline-ae", *common]) == 0
    printed = capsys.readouterr().out
    assert "| run |" in printed and "ACC" in printed and "digits baseline-ae" in printed
    assert main(["run", "--out", str(out_b), "--config", "original", *common]) == 0
    capsys.readouterr()
    assert main(["table", str(out_a), str(out_b), "--output", str(tmp_path / "t.md")]) == 0
    table = capsys.readouterr().out
    # one seed each: one row each, saying so (no average or best of one)
    assert table.count("| a |") == 1 and table.count("| b |") == 1 and table.count("| 1 seed |") == 2
    assert (tmp_path / "t.md").read_text().strip() == table.strip()
    # the fewer-labels figure: supervised runs against --labelled, the others as baselines
    out_c = tmp_path / "c"
    assert main(["run", "--out", str(out_c), "--config", "snnl-5", "--labelled", "300", *common]) == 0
    figure = tmp_path / "labels.png"
    assert main(["plot-labels", str(out_a), str(out_b), str(out_c), "--output", str(figure)]) == 0
    assert figure.stat().st_size > 1000
    assert main(["plot-labels", str(out_c), "--output", str(figure)]) == 2  # never replaced without --force
    assert "--force" in capsys.readouterr().err
    assert main(["plot-labels", str(out_a), "--output", str(tmp_path / "none.png")]) == 2
    assert "no supervised SNNL run" in capsys.readouterr().err


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "mnist (train, test)" in capsys.readouterr().err
    assert main(["table", str(tmp_path)]) == 2
    assert "metrics.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "a,b"])


def test_environment_names_the_code_that_ran():
    import subprocess
    from pathlib import Path

    from snnl.runs import provenance

    root = Path(provenance.__file__).resolve().parents[2]  # the checkout holding snnl/ (this looked inside snnl/)
    recorded = provenance.environment(torch.device("cpu"))["snnl_commit"]
    if not (root / ".git").exists():
        assert recorded is None  # an installed copy: no commit to name
        return
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert recorded.removesuffix("+dirty") == head
    dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "snnl"]).returncode != 0
    assert recorded.endswith("+dirty") == dirty


def test_protocol_all_trains_on_both_splits_and_clusters_every_image(tmp_path):
    # N2D's protocol: the label-free configurations train on the training and
    # test images (no labels) and every image is clustered and scored
    config = fast_config("snnl-label-free", protocol="all")
    result = run_experiment(config, tmp_path / "run", progress=False)
    embeddings = np.load(tmp_path / "run" / "embeddings.npz")
    assert embeddings["z"].shape[0] == 1797  # 1,347 training + 450 test digits
    np.testing.assert_array_equal(embeddings["y"][1347:], load_dataset("digits", "test").y)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["protocol"] == "all"
    assert result.summary["mean"]["acc"] > 0.3


def test_protocol_all_is_refused_where_training_reads_labels():
    with pytest.raises(ValueError, match="protocol='all' trains on the test images too; snnl-5 reads labels"):
        fast_config("snnl-5", protocol="all")


def test_labelled_all_trains_on_every_labelled_example(tmp_path):
    # --labelled all (documented in the help and the README): the whole training set, labelled
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--config", "snnl-5", "--labelled", "all", "--epochs", "1",
                 "--code-dim", "8", "--kmeans-restarts", "1", "--projection", "none", "--quiet"]) == 0  # fmt: skip
    stored = json.loads((out / "config.json").read_text())
    assert stored["labelled"] == "all"
    assert ExperimentConfig.from_dict(stored).labelled_count() is None  # every example, also when resumed
    assert main(["run", "--out", str(out), "--resume", "--config", "snnl-5", "--labelled", "all", "--epochs", "1",
                 "--code-dim", "8", "--kmeans-restarts", "1", "--projection", "none", "--quiet"]) == 0  # fmt: skip
    with pytest.raises(ValueError, match="labelled must be an integer >= 1 or 'all'"):
        fast_config(labelled="some")
