"""The autoencoder, the presets and training (including resume)."""

import numpy as np
import pytest
import torch

from snnl.autoencoder import Autoencoder, encode_in_batches
from snnl.data import labelled_subset, load_dataset
from snnl.optional import umap_learn_status
from snnl.train import positives
from snnl.train.checkpoints import load_checkpoint, model_from_checkpoint
from snnl.train.config import PRESETS, TrainConfig, describe, preset
from snnl.train.loop import train_autoencoder
from snnl.train.objective import batch_loss

from .label_free_cases import VARIANTS, label_free
from .tiny import TRAINING

SMALL = dict(TRAINING, epochs=3)


class _Interrupted(Exception):
    pass


def train_interrupted(x, y, config, epochs: int, **options):
    """Training stopped after ``epochs`` epochs (their checkpoints written), as an interruption would."""

    def stop(record):
        if record["epoch"] + 1 == epochs:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_autoencoder(x, y, config, progress=False, on_epoch_end=stop, **options)


def digits_subset(n=256):
    return labelled_subset(load_dataset("digits", "train"), n, 0)


def test_autoencoder_architecture():
    model = Autoencoder(784)
    widths = [(layer.in_features, layer.out_features) for layer in model.layers]
    assert widths == [(784, 500), (500, 500), (500, 2000), (2000, 70), (70, 2000), (2000, 500), (500, 500), (500, 784)]
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in model.layers)
    x = torch.rand(5, 784)
    logits, hidden = model(x)
    assert logits.shape == (5, 784) and [h.shape[1] for h in hidden] == [500, 500, 2000, 70, 2000, 500, 500]
    code = model.encode(x)
    assert torch.equal(code, hidden[model.code_index]) and code.min() >= 0 and code.max() <= 1
    assert torch.allclose(model.reconstruct(x), torch.sigmoid(logits))
    linear = Autoencoder(20, 5, (16,), "linear", "linear")  # N2D's: linear code and output
    x20 = torch.rand(3, 20)
    torch.testing.assert_close(linear.encode(x20), linear.layers[1](torch.relu(linear.layers[0](x20))))
    torch.testing.assert_close(linear.reconstruct(x20), linear(x20)[0])
    with pytest.raises(ValueError, match="code_activation must be one of"):
        Autoencoder(10, code_activation="tanh")


def test_encode_in_batches_matches_encode():
    model = Autoencoder(64, 8, (16, 16, 32))
    x = np.random.default_rng(0).random((300, 64), dtype=np.float32)
    torch.testing.assert_close(encode_in_batches(model, x, batch_size=77), model.encode(torch.from_numpy(x)))


def test_presets_follow_table_one():
    expected = {  # number: (supervised, annealing, combine)
        1: (True, False, "sum"),
        2: (False, False, "sum"),
        3: (True, False, "min"),
        4: (False, False, "min"),
        5: (True, True, "sum"),
        6: (False, True, "sum"),
        7: (True, True, "min"),
        8: (False, True, "min"),
    }
    for n, (supervised, annealing, combine) in expected.items():
        config = PRESETS[f"snnl-{n}"]
        assert (config.supervised, config.temperature == "annealing", config.combine) == (
            supervised,
            annealing,
            combine,
        )
        assert config.alpha == 100 and config.epochs == 50 and config.batch_size == 256 and config.code_dim == 70
    assert not PRESETS["baseline-ae"].snnl and PRESETS["original"].method == "pca"
    assert "annealed T" in describe(PRESETS["snnl-5"]) and "fixed T=100" in describe(PRESETS["snnl-1"])
    assert PRESETS["snnl-5"].temperature_schedule()(0) == 1.0
    with pytest.raises(ValueError, match="unknown configuration"):
        preset("snnl-9")
    with pytest.raises(ValueError, match="combine must be one of"):
        TrainConfig(combine="max")
    assert TrainConfig.from_dict(PRESETS["snnl-7"].to_dict()) == PRESETS["snnl-7"]


def test_the_presets_are_table_one_the_baselines_and_one_label_free():
    # each with the one-line meaning --config's help shows, from one list
    from snnl.cli import build_parser
    from snnl.train.config import PRESET_MEANINGS

    assert list(PRESETS) == list(PRESET_MEANINGS)
    assert [name for name in PRESETS if not PRESETS[name].uses_labels and PRESETS[name].positives != "classes"] == [
        "snnl-label-free"
    ]
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    (config_help,) = [action.help for action in run._actions if "--config" in action.option_strings]
    for name, meaning in PRESET_MEANINGS.items():
        assert f"{name}: {meaning}" in config_help
    # a run directory made with a retired preset still resumes: its record holds every field
    retired = label_free("umap-neighbour-views").replace(name="snnl-umap-neighbour-views", fixed_temperature=0.5)
    assert TrainConfig.from_dict(retired.to_dict()) == retired


def test_batch_loss_terms():
    torch.manual_seed(0)
    model = Autoencoder(64, 8, (16, 16, 32))
    x = torch.rand(40, 64)
    y = torch.randint(0, 4, (40,))
    total, rec, per_layer = batch_loss(model, x, y, 0.5, preset("snnl-5", **SMALL))
    assert len(per_layer) == 7
    torch.testing.assert_close(total, rec + 100 * torch.stack(per_layer).sum())
    total_min, _, _ = batch_loss(model, x, y, 0.5, preset("snnl-7", **SMALL))
    torch.testing.assert_close(total_min, rec + 100 * torch.stack(per_layer).min())
    _, _, unsupervised = batch_loss(model, x, y, 0.5, preset("snnl-6", **SMALL))
    assert max(v.item() for v in unsupervised) < 1e-4  # the same-class constraint dropped: ~0
    total_base, rec_base, none = batch_loss(model, x, y, 0.5, preset("baseline-ae", **SMALL))
    assert none == [] and torch.equal(total_base, rec_base)


def test_training_reduces_the_loss_and_records_history():
    data = digits_subset()
    result = train_autoencoder(data.x, data.y, preset("snnl-5", **{**SMALL, "epochs": 4}), seed=0, progress=False)
    history = result.history
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["loss"] < history[0]["loss"]
    assert [h["temperature"] for h in history] == pytest.approx([1.0, 2**-0.55, 3**-0.55, 4**-0.55])
    assert len(history[0]["snnl_per_layer"]) == 7


def test_plain_autoencoder_reports_no_temperature_or_snnl(capsys):
    data = digits_subset()
    result = train_autoencoder(data.x, data.y, preset("baseline-ae", **{**SMALL, "epochs": 2}), seed=0, progress=True)
    assert [h["temperature"] for h in result.history] == [None, None]
    assert all(h["snnl_per_layer"] == [] for h in result.history)
    shown = capsys.readouterr().err
    assert "rec=" in shown and "snnl=" not in shown and "T=" not in shown


def test_resume_equals_uninterrupted(tmp_path):
    data = digits_subset()
    config = preset("snnl-5", **SMALL)
    full = train_autoencoder(data.x, data.y, config, seed=3, progress=False, checkpoint_path=tmp_path / "a.pt")
    train_interrupted(data.x, data.y, config, 1, seed=3, checkpoint_path=tmp_path / "b.pt")
    assert load_checkpoint(tmp_path / "b.pt")["epoch"] == 0
    resumed = train_autoencoder(
        data.x, data.y, config, seed=3, progress=False, checkpoint_path=tmp_path / "b.pt", resume=True
    )
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert not list(tmp_path.glob(".*.part*"))  # no temporary file left behind
    reloaded = model_from_checkpoint(tmp_path / "b.pt")
    torch.testing.assert_close(reloaded.encode(torch.from_numpy(data.x)), full.model.encode(torch.from_numpy(data.x)))


def test_resume_refuses_a_different_configuration_naming_each_field(tmp_path):
    data = digits_subset(128)
    train_interrupted(data.x, data.y, preset("snnl-5", **SMALL), 1, seed=0, checkpoint_path=tmp_path / "c.pt")
    with pytest.raises(
        ValueError,
        match=r"trained with other options \(name: 'snnl-5' -> 'snnl-1'; "
        r"temperature: 'annealing' -> 'fixed'\)",
    ):
        train_autoencoder(
            data.x,
            data.y,
            preset("snnl-1", **SMALL),
            seed=0,
            progress=False,
            checkpoint_path=tmp_path / "c.pt",
            resume=True,
        )
    with pytest.raises(ValueError, match="belongs to seed 0, not 1"):
        train_autoencoder(
            data.x,
            data.y,
            preset("snnl-5", **SMALL),
            seed=1,
            progress=False,
            checkpoint_path=tmp_path / "c.pt",
            resume=True,
        )
    with pytest.raises(ValueError, match=r"has already trained 1 epochs; --epochs 0|epochs must be an integer >= 1"):
        train_autoencoder(
            data.x,
            data.y,
            preset("snnl-5", **{**SMALL, "epochs": 0}),
            seed=0,
            progress=False,
            checkpoint_path=tmp_path / "c.pt",
            resume=True,
        )


def test_resume_extends_training_to_more_epochs(tmp_path):
    # 2 epochs, then resumed to 3, equals 3 epochs at once (the schedule goes on)
    data = digits_subset(128)
    config = preset("snnl-5", **SMALL)
    full = train_autoencoder(data.x, data.y, config, seed=1, progress=False)
    train_autoencoder(
        data.x, data.y, config.replace(epochs=2), seed=1, progress=False, checkpoint_path=tmp_path / "c.pt"
    )
    longer = train_autoencoder(
        data.x,
        data.y,
        config.replace(loss_backend="reference"),
        seed=1,
        progress=False,
        checkpoint_path=tmp_path / "c.pt",
        resume=True,
    )
    assert [h["epoch"] for h in longer.history] == [0, 1, 2]
    assert longer.history[2]["loss"] == pytest.approx(full.history[2]["loss"], rel=1e-4)


def test_damaged_checkpoints_are_named_and_the_previous_one_is_used(tmp_path):
    from snnl.train.checkpoints import CheckpointError, previous_path

    data = digits_subset(128)
    config = preset("snnl-5", **SMALL)
    path = tmp_path / "seed0.pt"
    train_interrupted(data.x, data.y, config, 2, seed=0, checkpoint_path=path)
    assert load_checkpoint(previous_path(path))["epoch"] == 0 and load_checkpoint(path)["epoch"] == 1
    intact = path.read_bytes()
    for damage in (b"", intact[: len(intact) // 2], intact[:-5000] + bytes(5000)):  # empty, cut off, flipped bytes
        path.write_bytes(damage)
        with pytest.raises(CheckpointError, match=f"{path.name} (cannot be read|is damaged)"):
            load_checkpoint(path)
    # flip bits inside the stored tensors: the file still unpickles, the checksum catches it
    flipped = bytearray(intact)
    flipped[len(flipped) // 3] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="is damaged: its contents do not match the checksum"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match=r"is damaged.*resuming from the checkpoint before it, .*seed0.prev.pt"):
        resumed = train_autoencoder(data.x, data.y, config, seed=0, progress=False, checkpoint_path=path, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    path.write_bytes(b"junk")
    previous_path(path).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"No intact checkpoint is left: delete .*seed0.pt"):
        train_autoencoder(data.x, data.y, config, seed=0, progress=False, checkpoint_path=path, resume=True)


def test_training_leaves_the_global_random_state_alone():
    data = digits_subset(64)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_autoencoder(data.x, data.y, preset("snnl-5", **{**SMALL, "epochs": 1}), seed=7, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_progress_lines_when_not_on_a_terminal(capsys):
    data = digits_subset(64)
    train_autoencoder(data.x, data.y, preset("snnl-5", **{**SMALL, "epochs": 2}), seed=0, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("snnl-5 epoch 1/2: loss=") and "T=1" in lines[0]
    assert "\r" not in err and "\x1b" not in err
    train_autoencoder(data.x, data.y, preset("snnl-5", **{**SMALL, "epochs": 1}), seed=0, progress=False)
    assert capsys.readouterr().err == ""


def test_training_input_errors():
    config = preset("snnl-5", **SMALL)
    with pytest.raises(ValueError, match=r"needs inputs scaled to \[0, 1\]"):
        train_autoencoder(np.full((10, 4), 2.0), np.zeros(10, dtype=int), config, progress=False)
    with pytest.raises(ValueError, match="NaN or Inf"):
        train_autoencoder(np.full((10, 4), np.nan), np.zeros(10, dtype=int), config, progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        train_autoencoder(np.zeros((10, 4)), None, config, progress=False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train_autoencoder(
            np.zeros((10, 4)), np.zeros(10, dtype=int), config.replace(amp=True), device="cpu", progress=False
        )


def test_glorot_init_is_keras_dense_default():
    # N2D's code builds Keras Dense layers: Glorot-uniform kernels, zero biases, on every layer
    torch.manual_seed(0)
    model = Autoencoder(784, 10, init="glorot")
    for layer in model.layers:
        limit = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= limit and layer.weight.abs().max() > 0.9 * limit
        assert torch.count_nonzero(layer.bias) == 0
    he = Autoencoder(784, 10, init="he")
    # He-normal on the first ReLU layer has std sqrt(2 / 784), wider than Glorot's uniform bound allows
    assert he.layers[0].weight.abs().max() > (6.0 / (784 + 500)) ** 0.5
    with pytest.raises(ValueError, match="init must be one of"):
        Autoencoder(10, init="orthogonal")


def test_adam_eps_reaches_the_optimizer_and_snapshots_are_kept(tmp_path):
    from snnl.train.checkpoints import snapshot_path

    data = digits_subset(128)
    config = preset("baseline-ae", **{**SMALL, "epochs": 4}, adam_eps=1e-3, init="glorot")
    checkpoint = tmp_path / "seed0.pt"
    result = train_autoencoder(
        data.x, data.y, config, seed=0, device="cpu", checkpoint_path=checkpoint, progress=False, snapshot_every=2
    )
    state = load_checkpoint(checkpoint)
    assert state["optimizer"]["param_groups"][0]["eps"] == 1e-3 and state["model_config"]["init"] == "glorot"
    assert sorted(p.name for p in tmp_path.glob("seed0-epoch*.pt")) == ["seed0-epoch0002.pt", "seed0-epoch0004.pt"]
    last = model_from_checkpoint(snapshot_path(checkpoint, 4))
    for a, b in zip(last.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- label-free SNNL

# every label-free variant, and one with several partners per anchor
LABEL_FREE_CASES = [(name, 1) for name in VARIANTS] + [("neighbour-views", 3)]


def _small(variant: str, **changes):
    """``variant`` at the tests' small size; pseudo-labels, where it takes them, from the second epoch."""
    if label_free(variant).pseudo_labels_from is not None:
        changes = {"pseudo_labels_from": 1, "pseudo_label_clusters": 10, **changes}
    return label_free(variant, **{**SMALL, **changes})


@pytest.mark.parametrize(("name", "partners"), LABEL_FREE_CASES)
def test_no_label_reaches_label_free_training(name, partners):
    """The same seed with the true labels, permuted labels and no labels gives bitwise the same codes."""
    if label_free(name).neighbour_space == "umap" and not umap_learn_status()[0]:
        pytest.skip("umap-learn is not installed")
    data = digits_subset(200)
    config = _small(name, epochs=2, partners=partners)
    permuted = np.random.default_rng(1).permutation(data.y)
    codes = [
        encode_in_batches(
            train_autoencoder(data.x, labels, config, seed=4, progress=False, image_shape=data.image_shape).model,
            data.x,
        )
        for labels in (data.y, permuted, None)
    ]
    assert not np.array_equal(permuted, data.y)
    for other in codes[1:]:
        assert torch.equal(codes[0], other)
    # and the partners matter: a different seed trains differently
    again = train_autoencoder(data.x, None, config, seed=5, progress=False, image_shape=data.image_shape)
    assert not torch.equal(codes[0], encode_in_batches(again.model, data.x))


def test_label_free_estimator_ignores_y():
    from snnl.estimators import SNNLKMeans

    data = digits_subset(200)
    fitted = [
        SNNLKMeans(10, config="snnl-label-free", epochs=2, random_state=0, verbose=False, image_shape=data.image_shape)
        .fit(data.x, labels)
        .labels_
        for labels in (data.y, None)
    ]
    assert np.array_equal(*fitted)


@pytest.mark.parametrize(
    ("name", "partners"),
    [
        ("neighbour-views", 1),
        ("umap-neighbour-views", 1),
        ("neighbour-views", 2),
        ("snnl-label-free", 1),
    ],
)
def test_label_free_resume_equals_uninterrupted(tmp_path, monkeypatch, name, partners):
    # the partners' random state and their neighbour table travel in the checkpoint; the
    # pseudo-labels are computed again from the model and the seed
    if label_free(name).neighbour_space == "umap" and not umap_learn_status()[0]:
        pytest.skip("umap-learn is not installed")
    data = digits_subset(200)
    config = _small(name, partners=partners)
    full = train_autoencoder(data.x, None, config, seed=2, progress=False, image_shape=data.image_shape)
    train_interrupted(data.x, None, config, 1, seed=2, checkpoint_path=tmp_path / "c.pt", image_shape=data.image_shape)

    def no_search(*args, **kwargs):
        raise AssertionError("a resume searched the neighbours again")

    monkeypatch.setattr(positives, "neighbour_table", no_search)
    resumed = train_autoencoder(
        data.x,
        None,
        config,
        seed=2,
        progress=False,
        checkpoint_path=tmp_path / "c.pt",
        resume=True,
        image_shape=data.image_shape,
    )
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_label_free_positives_refuse_labels_and_the_pca_baseline():
    with pytest.raises(
        ValueError, match="positives='views' is label-free SNNL: it needs snnl=True and supervised=False"
    ):
        TrainConfig(positives="views")
    with pytest.raises(ValueError, match="is label-free SNNL"):
        TrainConfig(positives="neighbours", supervised=False, snnl=False)
    with pytest.raises(ValueError, match="positives must be one of"):
        TrainConfig(positives="pseudo", supervised=False)
    with pytest.raises(ValueError, match="neighbour_space='umap' says where nearest neighbours are searched"):
        TrainConfig(positives="views", supervised=False, neighbour_space="umap")
    with pytest.raises(ValueError, match="neighbour_space must be one of"):
        TrainConfig(positives="neighbours", supervised=False, neighbour_space="pixels")
    with pytest.raises(ValueError, match="partners=3 is for label-free positives: positives='classes' draws no"):
        TrainConfig(partners=3)
    with pytest.raises(ValueError, match="partners must be an integer >= 1"):
        TrainConfig(positives="views", supervised=False, partners=0)
    assert "3 per point" in describe(label_free(partners=3))
    assert not any(label_free(name).uses_labels for name in VARIANTS)


def test_label_free_run_trains_on_the_whole_training_set():
    from snnl.runs.config import ExperimentConfig

    for name in VARIANTS:
        assert ExperimentConfig(dataset="fashion-mnist", train=label_free(name)).labelled_count() is None


def test_the_neighbour_search_is_said_once_before_training(tmp_path, capsys):
    # a UMAP of 60,000 images takes minutes: the search is announced, and a resume does not repeat it
    data = digits_subset(200)
    config = label_free(**SMALL)
    options = dict(seed=0, progress="lines", checkpoint_path=tmp_path / "c.pt", image_shape=data.image_shape)
    train_autoencoder(data.x, None, config.replace(epochs=1), **options)
    first = capsys.readouterr().err
    assert "searching the 10 nearest neighbours of 200 points in the inputs" in first
    assert first.index("neighbours found in") < first.index("epoch 1/1")
    train_autoencoder(data.x, None, config.replace(epochs=2), resume=True, **options)
    assert "searching" not in capsys.readouterr().err
