"""The run configurations (snnl.runs.config), the validators and the choice lists they share."""

import subprocess
import sys

import pytest

from snnl import choices, validate
from snnl.cluster.manifold import ManifoldConfig
from snnl.runs.config import ExperimentConfig, N2DConfig
from snnl.train.config import TrainConfig


def test_resume_rules_are_field_metadata():
    # the sets that stored seed records' "evaluation" were written with
    assert set(ExperimentConfig.fields_resumed_as("evaluation")) == {
        "kmeans_backend",
        "kmeans_protocol",
        "kmeans_restarts",
        "projection",
        "silhouette_sample",
    }
    assert set(N2DConfig.fields_resumed_as("evaluation")) == {
        "manifold",
        "cluster",
        "kmeans_backend",
        "projection",
        "silhouette_sample",
    }
    assert set(ExperimentConfig.fields_resumed_as("placement")) == {"device", "data_dir", "download", "seeds"}
    assert set(N2DConfig.fields_resumed_as("placement")) == {
        "device",
        "data_dir",
        "download",
        "seeds",
        "snapshot_every",
    }
    assert set(TrainConfig.resumable_fields()) == {"epochs", "loss_backend"}


@pytest.mark.parametrize("cls", [ExperimentConfig, N2DConfig])
def test_configurations_round_trip_through_their_stored_form(cls):
    config = cls(dataset="digits", seeds=(3, 1), silhouette_sample=100)
    again = cls.from_dict(config.to_dict())
    assert again == config and again.to_dict() == config.to_dict()
    assert config.to_dict()["method"] == cls.METHOD
    with pytest.raises(ValueError, match=rf"unknown {cls.METHOD} options \['colour'\]"):
        cls.from_dict({**config.to_dict(), "colour": "red"})


@pytest.mark.parametrize("value", [3.0, True, "3", 0])
def test_integers_are_integers_everywhere(value):
    """One rule: N2DConfig, the N2D estimator and SNNLKMeans refuse 3.0 alike."""
    from snnl.estimators import N2D, SNNLKMeans

    with pytest.raises(ValueError, match="n_clusters must be an integer >= "):
        N2DConfig(n_clusters=value)
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 1"):
        N2D(n_clusters=value)._check_params()
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 1"):
        SNNLKMeans(n_clusters=value)._check_params()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        TrainConfig(epochs=value)


def test_numpy_integers_pass_and_come_back_as_int():
    import numpy as np

    assert validate.integer("k", np.int64(3)) == 3 and type(validate.integer("k", np.int64(3))) is int
    assert validate.seeds([np.int32(2)]) == (2,)
    assert ManifoldConfig(umap_neighbors=np.int64(5)).umap_neighbors == 5


def test_the_loss_registry_lists_the_shared_backend_choices():
    from snnl.loss import registry

    assert registry.CHOICES == choices.LOSS_BACKENDS == ("auto", *registry.BACKENDS)


def test_the_parser_and_the_configurations_load_without_torch():
    """`snnl --help` answers without importing torch or scikit-learn (seconds of start-up)."""
    code = (
        "import sys; from snnl.cli import build_parser; from snnl.runs.config import ExperimentConfig; "
        "build_parser(); print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_command_line_option_maps_to_a_configuration_field():
    import dataclasses

    from snnl import cli

    parser = cli.build_parser()
    commands = {
        name: sub
        for action in parser._actions
        if isinstance(action, __import__("argparse")._SubParsersAction)
        for name, sub in action.choices.items()
    }
    for command, maps in (
        ("run", {ExperimentConfig: cli.RUN_OPTIONS, TrainConfig: cli.RUN_TRAIN_OPTIONS}),
        ("n2d", {N2DConfig: cli.N2D_OPTIONS, TrainConfig: cli.N2D_TRAIN_OPTIONS, ManifoldConfig: cli.MANIFOLD_OPTIONS}),
    ):
        options = {action.dest for action in commands[command]._actions}
        for cls, mapping in maps.items():
            fields = {f.name for f in dataclasses.fields(cls)}
            assert set(mapping) <= options, (command, set(mapping) - options)
            assert set(mapping.values()) <= fields, (command, cls.__name__, set(mapping.values()) - fields)


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    from snnl.atomic import atomic_path, write_text

    target = tmp_path / "metrics.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1
    # the usual permissions, as a plain write would give
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode


def test_snnl_kernels_is_an_ordinary_subcommand(monkeypatch, capsys):
    # parsed here (bad options refused at once, --help without torch or Triton),
    # run in a child process without TRITON_INTERPRET with the parsed values
    import argparse

    from snnl.cli import main
    from snnl.kernel_tools import lab

    calls = []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    assert main(["kernels", "--batch", "256", "--dtype", "bfloat16", "--model"]) == 0
    ((command, env),) = calls
    assert command[:3] == [sys.executable, "-m", "snnl.kernel_tools.lab"] and "TRITON_INTERPRET" not in env
    parser = argparse.ArgumentParser()
    lab.add_arguments(parser)
    child = vars(parser.parse_args(command[3:]))
    assert child == {**vars(parser.parse_args([])), "batch": 256, "dtype": "bfloat16", "model": True}
    with pytest.raises(SystemExit) as refused:
        main(["kernels", "--dtype", "int8"])
    assert refused.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    assert len(calls) == 1  # nothing started for the refused one


def _run_config(*options):
    from snnl import cli

    return cli.experiment_from_args(cli.build_parser().parse_args(["run", *options])).train


def test_temperature_option_sets_a_fixed_temperature_or_the_annealing():
    fixed = _run_config("--config", "snnl-label-free", "--temperature", "1.5")
    assert (fixed.temperature, fixed.fixed_temperature, fixed.name) == ("fixed", 1.5, "snnl-label-free")
    # an annealing preset takes a fixed T too, and a fixed one the annealing
    assert _run_config("--config", "snnl-5", "--temperature", "2").temperature == "fixed"
    assert _run_config("--config", "snnl-1", "--temperature", "annealing").temperature == "annealing"
    # the option trains exactly what the preset at that temperature trains
    from snnl.train.config import preset

    assert fixed == preset("snnl-label-free", fixed_temperature=1.5)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "hot"])
def test_temperature_option_refuses_what_is_not_a_temperature(value, capsys):
    with pytest.raises(SystemExit):
        _run_config("--temperature", value)
    assert "temperature must be 'annealing' or a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["baseline-ae", "original"])
@pytest.mark.parametrize("option", ["--temperature", "--alpha"])
def test_snnl_term_options_are_refused_where_there_is_no_snnl_term(config, option):
    with pytest.raises(ValueError, match=f"{option[2:]} sets the SNNL term, and {config} has none"):
        _run_config("--config", config, option, "2")


def test_a_run_from_a_git_checkout_records_its_commit(tmp_path):
    # every record names the code that made it: the commit of the checkout the
    # package is imported from (+dirty when snnl/ differs from it), None elsewhere
    import shutil
    from pathlib import Path

    import snnl

    checkout = Path(snnl.__file__).resolve().parents[1]
    if not (checkout / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not running from a git checkout")
    from snnl.runs.provenance import environment, source_commit

    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    commit = source_commit()
    assert commit is not None and commit.removesuffix("+dirty") == head.strip()
    assert environment(__import__("torch").device("cpu"))["snnl_commit"] == commit
    # a copy of the package outside any checkout records none
    copy = tmp_path / "elsewhere"
    shutil.copytree(checkout / "snnl", copy / "snnl")
    code = "from snnl.runs.provenance import source_commit; print(source_commit())"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, env={"PATH": ""})
    assert out.stdout.strip() == "None", out.stderr


def test_every_subcommand_and_option_says_what_it_is():
    # a description on every subcommand's help page; every option explained, and
    # every option that takes a value with its default
    import argparse

    from snnl.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    unexplained = []
    for name, sub in subparsers.choices.items():
        if not sub.description:
            unexplained.append(f"snnl {name}: no description")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            text = action.help or ""
            takes_value = action.nargs != 0 and not isinstance(action, argparse._StoreTrueAction)
            shown = "default" in text or isinstance(sub.formatter_class(""), argparse.ArgumentDefaultsHelpFormatter)
            if not text or (takes_value and not shown and not action.required):
                unexplained.append(f"snnl {name} {action.option_strings[0]}: {text!r}")
    assert not unexplained, unexplained


def test_n2d_help_shows_n2ds_own_defaults(capsys):
    from snnl.cli import main

    with pytest.raises(SystemExit):
        main(["n2d", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: glorot, as Keras, N2D's code)" in text and "(default: 1e-07, as Keras, N2D's code)" in text
    assert "default: he" not in text
