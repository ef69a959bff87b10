"""Nothing of the user's lost: output directories, options checked before any
training, what --resume may change, damaged checkpoints, the run lock, the
table of runs and the logs.  CLI cases run in-process through ``snnl.cli.main``."""

import json
import re
import time

import pytest

from snnl.cli import main
from snnl.methods import agarap
from snnl.optional import umap_learn_status
from snnl.runs import outdir

# a small network and few epochs: every case below runs in seconds
FAST = ["--epochs", "1", "--batch-size", "128", "--kmeans-restarts", "1", "--projection", "none", "--quiet"]
SMALL_NET = ["--code-dim", "8"]


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any model starts training."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started although an option was invalid")

    from snnl.methods import n2d
    from snnl.train import loop

    monkeypatch.setattr(loop, "train_autoencoder", refuse)  # what the experiment's encoder calls

    monkeypatch.setattr(n2d, "train_autoencoder", refuse)


def run(*args):
    return exit_code(["run", *FAST, *SMALL_NET, *args])


def exit_code(argv) -> int:
    """main's return value, or the exit code of argparse's own errors."""
    try:
        return main(argv)
    except SystemExit as error:
        return error.code


# --------------------------------------------------------------------------- output directories


def test_a_directory_of_someone_elses_files_is_refused_and_left_alone(tmp_path, capsys, no_training):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text("my own numbers")
    (out / "notes").mkdir()
    assert run("--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no snnl run (metrics.json, notes/)" in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes"]  # not even a lock file
    assert (out / "metrics.json").read_text() == "my own numbers"


@pytest.mark.slow
def test_a_file_as_out_and_a_finished_run_without_resume(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run("--out", str(tmp_path / "file")) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    out = tmp_path / "run"
    assert run("--out", str(out)) == 0
    capsys.readouterr()
    assert run("--out", str(out)) == 2
    assert "already holds a run: pass --resume" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run("--out", str(tmp_path / "empty")) == 0  # an empty directory is fine


def test_resume_of_a_directory_without_a_run_is_refused_before_anything(tmp_path, capsys, no_training):
    missing = tmp_path / "typo"
    assert run("--out", str(missing), "--resume") == 2
    err = capsys.readouterr().err
    assert f"--resume: {missing} does not exist, so there is no run to continue" in err
    assert "seeds [0]" not in err  # no header for a run that does not start
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    assert main(["n2d", "--epochs", "1", "--quiet", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "empty, so there is no run to continue" in capsys.readouterr().err
    assert list((tmp_path / "empty").iterdir()) == []
    assert run("--resume") == 2
    assert "resuming needs the output directory of the run to continue (--out)" in capsys.readouterr().err


def test_a_run_without_out_says_that_it_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run() == 0
    err = capsys.readouterr().err
    assert "no --out given, so only the metrics are printed; nothing is written" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- options checked first


@pytest.mark.parametrize(
    "options,message",
    [
        (["--seeds", "-1"], r"seeds must be integers in \[0, 2\*\*32\), got -1"),
        (["--seeds", "0,0"], "seeds must not repeat; 0 appear"),
        (["--kmeans-restarts", "0"], "kmeans_restarts must be an integer >= 1, got 0"),
        (["--silhouette-sample", "0"], "silhouette_sample must be an integer >= 2, got 0"),
        (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        (["--labelled", "5000"], "5000 labelled examples asked for, but the digits training set has 1347"),
        (["--dataset", "blobs", "--blobs", "n_sample=50"], r"blobs: unknown option\(s\) n_sample; the options are"),
        (["--dataset", "blobs", "--blobs", "centers=x"], "--dataset-options centers: 'x' is not a number"),
        (["--dataset-options", "centers=3"], "digits takes no dataset options; got centers"),
    ],
)
def test_snnl_run_options_are_checked_before_training(tmp_path, capsys, no_training, options, message):
    started = time.perf_counter()
    assert run("--out", str(tmp_path / "run"), *options) == 2
    assert re.search(message, capsys.readouterr().err)
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "options,message",
    [
        (["--umap-neighbors", "1"], "umap_neighbors must be an integer >= 2, got 1"),
        (["--n-clusters", "1"], "n_clusters must be an integer >= 2, got 1"),
        (["--n-clusters", "5000"], "n_clusters=5000 is more than the 1797 points to cluster"),
        (["--manifold", "isomap", "--umap-fit-sample", "5"], "fit_sample must be an integer >= 21"),
    ],
)
def test_snnl_n2d_options_are_checked_before_training(tmp_path, capsys, no_training, options, message):
    assert main(["n2d", "--epochs", "1", "--quiet", "--out", str(tmp_path / "n2d"), *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [["n2d"], ["run", "--dataset", "digits", "--config", "snnl-label-free"]],
    ids=["n2d", "umap-neighbours"],
)
def test_a_missing_umap_is_reported_before_training(tmp_path, capsys, no_training, monkeypatch, command):
    from snnl import optional

    monkeypatch.setattr(
        optional, "umap_learn_status", lambda: (False, "umap-learn is not installed (pip install 'snnl[umap]')")
    )
    monkeypatch.setattr(optional, "cuml_status", lambda: (False, "cuML is not installed"))
    assert main([*command, "--epochs", "1000", "--quiet", "--out", str(tmp_path / "out")]) == 2
    assert (
        "UMAP needs cuML or umap-learn: umap-learn is not installed (pip install 'snnl[umap]')"
        in capsys.readouterr().err
    )


# --------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_resume_names_each_change_it_refuses(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--out", str(out), "--seeds", "0,1") == 0
    capsys.readouterr()
    assert run("--out", str(out), "--resume", "--alpha", "50", "--config", "snnl-1") == 2
    err = capsys.readouterr().err
    assert "--resume cannot change what the trained models depend on:" in err
    assert "train.alpha: 100.0 -> 50.0" in err and "train.name: 'snnl-5' -> 'snnl-1'" in err
    assert "train.temperature: 'annealing' -> 'fixed'" in err
    assert main(["run", "--out", str(out), "--resume", "--epochs", "0", "--quiet"]) == 2
    assert "epochs must be an integer >= 1, got 0" in capsys.readouterr().err


def test_resume_with_another_dataset_names_the_change_before_reading_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run("--out", str(out)) == 0
    capsys.readouterr()
    loaded = []
    monkeypatch.setattr(agarap, "load_train_and_test", lambda config: loaded.append(config))
    assert run("--out", str(out), "--resume", "--dataset", "fashion-mnist") == 2
    assert (
        "--resume cannot change what the trained models depend on: dataset: 'digits' -> 'fashion-mnist'"
        in capsys.readouterr().err
    )
    assert loaded == []


@pytest.mark.slow
def test_resume_takes_the_stored_options_and_redoes_only_the_evaluation(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run("--out", str(out), "--seeds", "0,1", "--kmeans-restarts", "1") == 0
    capsys.readouterr()
    before = json.loads((out / "metrics.json").read_text())
    trained = []
    from snnl.train import loop

    original = loop.train_autoencoder

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        trained.append(len(result.history))
        return result

    monkeypatch.setattr(loop, "train_autoencoder", spy)
    # nothing but the k-means restarts given: everything else is the stored run's
    assert main(["run", "--out", str(out), "--resume", "--kmeans-restarts", "3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("resuming") == 1 and "kmeans_restarts: 1 -> 3" in err  # said once, not per check
    after = json.loads((out / "metrics.json").read_text())
    assert after["config"]["kmeans_restarts"] == 3 and after["config"]["train"] == before["config"]["train"]
    assert trained == [1, 1]  # both seeds evaluated again, from their checkpoints: no epoch trained again
    assert json.loads((out / "seeds" / "seed1.json").read_text())["evaluation"]["kmeans_restarts"] == 3
    # unchanged options: the finished second seed is reused as it is
    trained.clear()
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0
    assert trained == [1]
    # a larger --epochs extends training
    trained.clear()
    assert main(["run", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert trained == [2, 2] and json.loads((out / "config.json").read_text())["train"]["epochs"] == 2


@pytest.mark.slow
def test_resume_needs_the_checkpoint_to_evaluate_again(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--out", str(out), "--seeds", "0,1") == 0
    for path in (out / "checkpoints").glob("seed1*"):
        path.unlink()
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--resume", "--kmeans-restarts", "2", "--quiet"]) == 2
    assert "seed 1 must be evaluated again (its options changed) but its checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_with_damaged_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--out", str(out), "--epochs", "2") == 0
    capsys.readouterr()
    (out / "checkpoints" / "seed0.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match="seed0.pt cannot be read .*resuming from the checkpoint before it"):
        assert main(["run", "--out", str(out), "--resume", "--epochs", "3", "--quiet"]) == 0
    for name in ("seed0.pt", "seed0.prev.pt"):
        (out / "checkpoints" / name).write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--resume", "--epochs", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "seed0.pt cannot be read" in err and "No intact checkpoint is left: delete" in err


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with outdir.locked(out):
        assert run("--out", str(out)) == 2
    assert "is in use by another snnl run (pid" in capsys.readouterr().err
    assert run("--out", str(out)) == 0  # the lock went with its holder


def test_a_run_in_progress_is_in_use_not_one_to_resume(tmp_path, capsys):
    # two runs started at once into a new directory: the second was told to pass --resume
    out = tmp_path / "run"
    assert run("--out", str(out)) == 0
    capsys.readouterr()
    with outdir.locked(out):  # as while the first still writes there
        assert run("--out", str(out)) == 2
        assert run("--out", str(out), "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("is in use by another snnl run (pid") == 2 and "pass --resume" not in err


# --------------------------------------------------------------------------- the table of runs, and logs


def test_table_names_bad_files_leaves_out_unfinished_runs_and_says_what_each_row_is(tmp_path, capsys):
    out = tmp_path / "done"
    assert run("--out", str(out), "--config", "snnl-1") == 0
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    capsys.readouterr()
    assert main(["table", str(out), str(unfinished)]) == 0
    captured = capsys.readouterr()
    assert "left out " + str(unfinished) in captured.err
    assert "| run | dataset | method | epochs |" in captured.out
    assert "| done | digits | snnl-1, all labels | 1 |" in captured.out
    free = tmp_path / "free"
    assert run("--out", str(free), "--config", "baseline-ae", "--epochs", "2") == 0
    assert run("--out", str(tmp_path / "pca"), "--config", "original") == 0
    capsys.readouterr()
    assert main(["table", str(free), str(tmp_path / "pca")]) == 0
    table = capsys.readouterr().out
    assert "| free | digits | baseline-ae, no labels | 2 |" in table  # its labels are never read
    assert "| pca | digits | original, no labels | - |" in table  # PCA trains no epochs
    with outdir.locked(free):  # as while it is being resumed: its metrics.json is the one before
        assert main(["table", str(out), str(free)]) == 0
        captured = capsys.readouterr()
        assert f"left out {free}: a run is writing there now (pid" in captured.err and "| free |" not in captured.out
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    assert main(["table", str(out), str(broken)]) == 2
    assert f"{broken / 'metrics.json'} is not a readable snnl metrics file" in capsys.readouterr().err
    (tmp_path / "t.md").write_text("mine")
    assert main(["table", str(out), "--output", str(tmp_path / "t.md")]) == 2
    assert "pass --force" in capsys.readouterr().err and (tmp_path / "t.md").read_text() == "mine"


def test_an_interruption_message_follows_the_closed_progress_bars(tmp_path, monkeypatch):
    import io
    import sys

    from snnl.train import loop

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C in the first epoch's third batch, with both bars drawn
            raise KeyboardInterrupt
        return loop.batch_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "batch_loss", interrupted)
    assert (
        main(
            [
                "run",
                "--epochs",
                "2",
                "--batch-size",
                "128",
                "--code-dim",
                "8",
                "--projection",
                "none",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 130
    )
    drawn = terminal.getvalue()
    message = "snnl run: interrupted (--resume continues from the last checkpoint)\n"
    assert "epoch 1:" in drawn and drawn.endswith(message)
    before = drawn[: -len(message)]
    assert before.endswith("\n") and not before.rstrip("\n").endswith(message.strip())


@pytest.mark.slow
def test_logs_are_plain_lines_when_redirected(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--out",
                str(tmp_path / "run"),
                "--epochs",
                "2",
                "--batch-size",
                "128",
                "--code-dim",
                "8",
                "--kmeans-restarts",
                "1",
                "--projection",
                "none",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "snnl-5 epoch 1/2: loss=" in err and "snnl-5 epoch 2/2: loss=" in err
    assert f"figures: {tmp_path / 'run' / 'figures'}, without projections ..." in err  # the figure stage is said
    assert re.search(r"figures: done in \d+\.\d s", err)
    assert "\r" not in err and "\x1b[" not in err


@pytest.mark.skipif(not umap_learn_status()[0], reason="umap-learn is not installed")
def test_n2d_resume_may_change_the_manifold_but_not_the_autoencoder(tmp_path, capsys):
    out = tmp_path / "n2d"
    assert (
        main(["n2d", "--epochs", "1", "--quiet", "--manifold", "none", "--projection", "none", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    assert main(["n2d", "--out", str(out), "--resume", "--manifold", "isomap", "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["manifold"]["method"] == "isomap"
    capsys.readouterr()
    assert main(["n2d", "--out", str(out), "--resume", "--lr", "0.01", "--quiet"]) == 2
    assert "autoencoder.learning_rate: 0.001 -> 0.01" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "holds an `snnl n2d` run: resume it with `snnl n2d --resume`" in capsys.readouterr().err


def test_the_closing_line_names_only_what_the_run_wrote(tmp_path, capsys):
    trained = tmp_path / "snnl"
    assert run("--out", str(trained)) == 0
    assert f"results, embeddings, checkpoints and figures in {trained}" in capsys.readouterr().err
    clustered = tmp_path / "n2d"
    assert (
        main(
            [
                "n2d",
                "--codes-from",
                str(trained),
                "--manifold",
                "none",
                "--projection",
                "none",
                "--quiet",
                "--out",
                str(clustered),
            ]
        )
        == 0
    )
    assert f"results, embeddings and figures in {clustered}" in capsys.readouterr().err  # it trained nothing
    assert not (clustered / "checkpoints").exists()


@pytest.mark.parametrize("bad", ["nan", "range"])
def test_bad_images_are_refused_before_the_output_directory_is_claimed(tmp_path, no_training, capsys, bad):
    # (they were refused only after --out was claimed, leaving a directory that then demanded --resume)
    import numpy as np

    from snnl.data import catalog
    from snnl.data.idx import write_idx

    spec = catalog.IDX_DATASETS["mnist"]
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for split, n in (("train", 40), ("test", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.float32)
        if split == "train":
            images[3, 4, 5] = np.nan if bad == "nan" else 1000.0  # 1000 / 255: beyond [0, 1]
        write_idx(tmp_path / "data" / spec.files[(split, "images")], images)
        write_idx(tmp_path / "data" / spec.files[(split, "labels")], rng.integers(0, 10, n).astype(np.uint8))
    out = tmp_path / "out"
    code = exit_code(["run", *FAST, *SMALL_NET, "--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                      "--labelled", "30", "--out", str(out)])  # fmt: skip
    assert code != 0
    assert ("NaN or Inf" if bad == "nan" else "needs inputs scaled to [0, 1]") in capsys.readouterr().err
    assert not out.exists()


def test_a_killed_writers_temporary_is_removed_when_the_run_claims_its_directory(tmp_path):
    # kill -9 during a checkpoint write left a 30-45 MB .part file that nothing removed
    import subprocess
    import sys

    out = tmp_path / "run"
    assert run("--out", str(out)) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = out / "checkpoints" / f".seed0.{pid}-0123abcd.part.pt"
    stale.write_bytes(b"half a checkpoint")
    alive = out / "checkpoints" / f".seed0.{__import__('os').getpid()}-0123abcd.part.pt"  # a live writer's
    alive.write_bytes(b"being written")
    assert run("--out", str(out), "--resume") == 0
    assert not stale.exists() and alive.exists()


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    # torch's message for it was "enforce fail at inline_container.cc:672 ... unexpected pos 960 vs 854"
    import shutil

    import torch

    from snnl.train import checkpoints

    original = torch.save

    def full(obj, f, *args, **kwargs):
        if not hasattr(f, "write"):  # the file (the payload's in-memory buffer is written first)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 960 vs 854")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match=r"no space left on the device while writing .*model.pt .*--resume"):
        checkpoints.save({"a": 1}, tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())  # and no temporary left
