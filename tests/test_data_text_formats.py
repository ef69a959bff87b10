"""The text-format datasets of the N2D paper (USPS, pendigits, HAR), read from files the tests write."""

import bz2
import json
from pathlib import Path

import numpy as np
import pytest

from snnl.data import DatasetNotFoundError, load_dataset, sources, train_and_test
from snnl.data.catalog import TEXT_DATASETS


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


def test_a_text_dataset_is_one_catalog_entry(tmp_path, monkeypatch):
    """Every entry names a reader; a new dataset in a known format is one
    entry, with nothing else to change (its name, its files, its reader)."""
    from snnl.data import catalog, text_formats

    assert all(spec.reader in text_formats.READERS for spec in catalog.TEXT_DATASETS.values())
    toy = catalog.TextDataset(
        "toy", {"train": ("toy.csv",), "test": ("toy.t.csv",)}, tuple("0123456789"), "-", "pendigits"
    )
    monkeypatch.setitem(catalog.TEXT_DATASETS, "toy", toy)
    (tmp_path / "toy.csv").write_text(",".join(["50"] * 16) + ",3\n" + ",".join(["100"] * 16) + ",7\n")
    (tmp_path / "toy.t.csv").write_text(",".join(["0"] * 16) + ",1\n")
    train = load_dataset("toy", "train", data_dir=tmp_path)
    assert train.y.tolist() == [3, 7] and train.x[0, 0] == 0.5 and train.classes == toy.classes


def _write_usps(folder, rows: int, rng) -> None:
    """LIBSVM lines: labels 1-10, 256 features in [-1, 1]."""
    for name, n in (("usps", rows), ("usps.t", rows // 2)):
        lines = [
            f"{i % 10 + 1} " + " ".join(f"{j + 1}:{v:.3f}" for j, v in enumerate(rng.uniform(-1, 1, 256)))
            for i in range(n)
        ]
        (folder / name).write_text("\n".join(lines) + "\n")


def _write_pendigits(folder, rows: int, rng) -> None:
    """Comma-separated: 16 coordinates 0-100, then the digit."""
    (folder / "pendigits").mkdir()
    for name, n in (("pendigits.tra", rows), ("pendigits.tes", rows // 2)):
        lines = [",".join(map(str, rng.integers(0, 101, 16))) + f",{i % 10}" for i in range(n)]
        (folder / "pendigits" / name).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("name", "write", "views"), [("usps", _write_usps, "image"), ("pendigits", _write_pendigits, "tabular")]
)
def test_label_free_presets_run_on_the_text_datasets(tmp_path, monkeypatch, name, write, views):
    """The label-free presets on USPS (16x16 images: image views) and pendigits
    (16 pen coordinates: tabular views), end to end from files in the readers' formats."""
    from snnl.cli import main
    from snnl.train import augment

    write(tmp_path, 60, np.random.default_rng(0))
    made = []
    for kind in ("image", "tabular"):
        original = getattr(augment, f"{kind}_views")
        monkeypatch.setattr(
            augment,
            f"{kind}_views",
            lambda *args, _kind=kind, _original=original: made.append(_kind) or _original(*args),
        )
    out = tmp_path / "run"
    common = ["--epochs", "1", "--kmeans-restarts", "2", "--projection", "none", "--quiet", "--out", str(out)]
    assert main(["run", "--dataset", name, "--data-dir", str(tmp_path), "--config", "snnl-label-free", *common]) == 0
    assert made and set(made) == {views}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["dataset"] == name and metrics["config"]["train"]["name"] == "snnl-label-free"
    spec = TEXT_DATASETS[name]
    assert [Path(f["file"]).name for f in metrics["data_files"]] == [
        Path(f).name for f in spec.files["train"] + spec.files["test"]
    ]
    assert 0.0 <= metrics["summary"]["mean"]["acc"] <= 1.0
