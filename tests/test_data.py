"""IDX reading, dataset lookup, downloads, built-in sets and labelled subsets.

MNIST and EMNIST cannot be fetched here, so their loaders are tested on small
files these tests write in the real format."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from snnl.data import (
    DataMismatchError,
    DatasetNotFoundError,
    IdxFormatError,
    catalog,
    labelled_subset,
    load_dataset,
    load_splits,
    sources,
)
from snnl.data.idx import read_idx, write_idx

# The synthetic IDX files these tests write are not the published ones: the
# warning saying so is expected (the tests that check it use pytest.warns).
pytestmark = pytest.mark.filterwarnings("ignore:.*does not match the published checksum:UserWarning")

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch the user's cache or $SNNL_DATA; no system dirs unless a test asks.
    monkeypatch.setenv("SNNL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SNNL_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", ())


def write_split(directory: Path, spec, split: str, images: np.ndarray, labels: np.ndarray, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images", images), ("labels", labels)):
        name = spec.files[(split, kind)]
        write_idx(directory / (name if gz else name[:-3]), array)


def tiny_images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_roundtrip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.abs(array).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "plain", np.arange(5, dtype=np.uint8), compress=True)
    assert np.array_equal(read_idx(tmp_path / "plain"), np.arange(5))


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IdxFormatError, match=r"bad\.idx: bad magic number"):
        read_idx(path)


def test_idx_unknown_type(tmp_path):
    path = tmp_path / "t.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(IdxFormatError, match="unknown IDX data type 0x07"):
        read_idx(path)


def test_idx_truncated_data_and_header(tmp_path):
    path = tmp_path / "short.idx"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(IdxFormatError, match=r"short\.idx: truncated: shape \(4, 28, 28\)"):
        read_idx(path)
    path.write_bytes(data[:9])
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(path)
    path.write_bytes(data + b"xx")
    with pytest.raises(IdxFormatError, match="2 unexpected bytes"):
        read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.idx.gz"
    write_idx(path, np.zeros((50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(IdxFormatError, match=r"cut\.idx\.gz: cannot be decompressed"):
        read_idx(path)


def test_mnist_from_data_dir(tmp_path):
    spec = catalog.IDX_DATASETS["mnist"]
    images, labels = tiny_images(), np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    write_split(tmp_path / "mnist", spec, "test", images, labels)
    data = load_dataset("mnist", "test", data_dir=tmp_path)
    assert data.x.shape == (6, 784) and data.x.dtype == np.float32
    np.testing.assert_allclose(data.x, images.reshape(6, -1) / 255.0, rtol=1e-6)
    assert data.y.tolist() == [3, 1, 4, 1, 5, 9] and data.n_classes == 10


def test_uncompressed_files_in_the_data_dir_itself(tmp_path):
    spec = catalog.IDX_DATASETS["fashion-mnist"]
    write_split(tmp_path, spec, "train", tiny_images(), np.arange(6, dtype=np.uint8), gz=False)
    data = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    assert data.classes[0] == "T-shirt/top" and len(data) == 6


def test_snnl_data_root_needs_the_dataset_folder(tmp_path, monkeypatch):
    # MNIST and Fashion-MNIST share file names: a bare root must not be mistaken for either.
    spec = catalog.IDX_DATASETS["fashion-mnist"]
    write_split(tmp_path, spec, "test", tiny_images(), np.arange(6, dtype=np.uint8))
    monkeypatch.setenv("SNNL_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "test")
    write_split(tmp_path / "mnist", spec, "test", tiny_images(), np.arange(6, dtype=np.uint8))
    assert len(load_dataset("mnist", "test")) == 6


def test_emnist_orientation_and_letter_labels(tmp_path):
    spec = catalog.IDX_DATASETS["emnist-letters"]
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 3, 20] = 255  # stored transposed: pixel (row 20, column 3) after the fix
    write_split(tmp_path, spec, "train", images, np.array([1, 26], dtype=np.uint8))
    data = load_dataset("emnist-letters", "train", data_dir=tmp_path)
    assert data.x[0].reshape(28, 28)[20, 3] == 1.0 and data.x[0].sum() == 1.0
    assert data.y.tolist() == [0, 25] and data.classes[data.y[1]] == "z"


def test_emnist_balanced_mapping():
    classes = catalog.IDX_DATASETS["emnist-balanced"].classes
    assert len(classes) == 47 and classes[:10] == tuple("0123456789")
    assert classes[10] == "A" and classes[35] == "Z" and classes[36:] == tuple("abdefghnqrt")
    assert catalog.IDX_DATASETS["emnist-balanced"].labelled_default == 20_000


def test_count_mismatch_names_both_files(tmp_path):
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "test", tiny_images(6), np.arange(5, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"t10k-images.*6 images but .*t10k-labels.*5 labels"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_labels_out_of_range(tmp_path):
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "test", tiny_images(2), np.array([1, 12], dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="outside the 10 classes"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_wrong_image_shape(tmp_path):
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "test", np.zeros((2, 16, 16), dtype=np.uint8), np.array([1, 2], dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"expected images of shape \(n, 28, 28\)"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("emnist-balanced", "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "emnist-balanced") in message and "cache" in message
    assert "--download" in message and "nist.gov" in message


def fake_remote(tmp_path, payload: bytes, *, sha256=None):
    source = tmp_path / "served" / "file.gz"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    digest = sha256 or hashlib.sha256(payload).hexdigest()
    return catalog.RemoteFile("file.gz", (source.as_uri(),), sha256=digest, size=len(payload))


def test_download_verifies_and_moves_into_place(tmp_path):
    payload = gzip.compress(b"payload")  # once: gzip's header holds the time, to the second
    remote = fake_remote(tmp_path, payload)
    target = tmp_path / "cache" / "x" / "file.gz"
    sources.download(remote, target)
    assert target.read_bytes() == payload
    assert not list(target.parent.glob("*.part"))


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    remote = fake_remote(tmp_path, b"payload", sha256="0" * 64)
    target = tmp_path / "cache" / "x" / "file.gz"
    # every mirror's failure (here a ChecksumError) is named in one OSError
    with pytest.raises(OSError, match="sha256 mismatch"):
        sources.download(remote, target)
    assert not target.exists() and not list(target.parent.glob("*"))


def test_download_unreachable_mirror_is_an_error(tmp_path):
    remote = catalog.RemoteFile("f.gz", ((tmp_path / "nope").as_uri(),), sha256="0" * 64)
    with pytest.raises(OSError, match="could not download f.gz"):
        sources.download(remote, tmp_path / "cache" / "f.gz")


def test_load_with_download_fills_the_cache(tmp_path, monkeypatch):
    spec = catalog.IDX_DATASETS["mnist"]
    served = tmp_path / "served"
    write_split(served, spec, "test", tiny_images(), np.arange(6, dtype=np.uint8))
    write_split(served, spec, "train", tiny_images(), np.arange(6, dtype=np.uint8))
    remotes = []
    for name in spec.files.values():
        payload = (served / name).read_bytes()
        remotes.append(
            catalog.RemoteFile(name, ((served / name).as_uri(),), sha256=hashlib.sha256(payload).hexdigest())
        )
    monkeypatch.setitem(
        catalog.IDX_DATASETS, "mnist", catalog.IdxDataset(**{**spec.__dict__, "remote": tuple(remotes)})
    )
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", "test")
    data = load_dataset("mnist", "test", download=True)
    assert len(data) == 6 and (tmp_path / "cache" / "mnist" / spec.files[("test", "images")]).is_file()


def test_digits_builtin():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape == (1347, 64) and test.x.shape == (450, 64)
    assert train.x.min() >= 0 and train.x.max() <= 1 and train.image_shape == (8, 8)
    assert sorted(set(test.y.tolist())) == list(range(10))


def test_blobs_builtin_and_options():
    data = load_dataset("blobs", "train", n_samples=400, n_features=5, centers=4, seed=3)
    assert data.x.shape == (300, 5) and data.x.min() >= 0 and data.x.max() <= 1 and data.n_classes == 4
    again = load_dataset("blobs", "train", n_samples=400, n_features=5, centers=4, seed=3)
    assert np.array_equal(data.x, again.x)
    with pytest.raises(ValueError, match="blobs: n_features must be an integer >= 1"):
        load_dataset("blobs", "train", n_features=0)
    with pytest.raises(ValueError, match="takes no dataset options"):
        load_dataset("digits", "train", n_samples=3)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("digits", "validation")


def test_labelled_subset_is_seeded_and_stratified():
    train = load_dataset("digits", "train")
    a, b, c = labelled_subset(train, 500, 0), labelled_subset(train, 500, 0), labelled_subset(train, 500, 1)
    assert len(a) == 500 and np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    counts = np.bincount(a.y, minlength=10)
    assert counts.min() >= 48 and counts.max() <= 52
    assert labelled_subset(train, None) is train
    with pytest.raises(ValueError, match="cannot take 5000 labelled examples"):
        labelled_subset(train, 5000)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_first_images(monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DIRS", (Path("/usr/share/datasets"),))
    test = load_dataset("fashion-mnist", "test")
    assert test.x.shape == (10_000, 784) and np.bincount(test.y).tolist() == [1000] * 10
    subset = test.subset(np.arange(3000))
    assert 0.0 <= subset.x.min() and subset.x.max() == 1.0
    assert test.classes[test.y[0]] == "Ankle boot"  # the first test image of Fashion-MNIST


# --------------------------------------------------------------------------- where files come from, and which


def test_explicit_data_dir_must_exist(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"data directory .*nowhere does not exist"):
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere")


def test_explicit_data_dir_is_used_alone_and_whole(tmp_path, monkeypatch):
    spec = catalog.IDX_DATASETS["mnist"]
    # a complete copy in the cache must not fill in for what the data dir lacks
    for split in ("train", "test"):
        write_split(tmp_path / "cache" / "mnist", spec, split, tiny_images(), np.arange(6, dtype=np.uint8))
    only_train = tmp_path / "mine"
    write_split(only_train, spec, "train", tiny_images(seed=1), np.arange(6, dtype=np.uint8))
    assert len(load_dataset("mnist", "train", data_dir=only_train)) == 6
    with pytest.raises(DatasetNotFoundError, match=r"(?s)missing t10k-images.*used alone"):
        load_splits("mnist", ("train", "test"), data_dir=only_train)
    train, test = load_splits("mnist", ("train", "test"))  # no data dir: the complete cache copy
    assert str(tmp_path / "cache") in train.files[0]["file"] and str(tmp_path / "cache") in test.files[0]["file"]


def test_splits_never_mix_directories(tmp_path, monkeypatch):
    spec = catalog.IDX_DATASETS["mnist"]
    monkeypatch.setenv("SNNL_DATA", str(tmp_path / "data"))
    write_split(tmp_path / "data" / "mnist", spec, "train", tiny_images(), np.arange(6, dtype=np.uint8))
    write_split(tmp_path / "cache" / "mnist", spec, "test", tiny_images(), np.arange(6, dtype=np.uint8))
    with pytest.raises(DatasetNotFoundError, match="are not all in one of"):
        load_splits("mnist", ("train", "test"))


def _fake_published(monkeypatch, dataset: str, directory: Path):
    """Pretend the files in ``directory`` are ``dataset``'s published ones."""
    spec = catalog.IDX_DATASETS[dataset]
    digests = {
        name: hashlib.sha256(gzip.decompress((directory / name).read_bytes())).hexdigest()
        for name in spec.files.values()
        if (directory / name).is_file()
    }
    monkeypatch.setitem(
        catalog.IDX_DATASETS, dataset, catalog.IdxDataset(**{**spec.__dict__, "content_sha256": digests})
    )


def test_another_datasets_files_are_refused(tmp_path, monkeypatch):
    fashion = catalog.IDX_DATASETS["fashion-mnist"]
    write_split(tmp_path, fashion, "test", tiny_images(), np.arange(6, dtype=np.uint8))
    _fake_published(monkeypatch, "fashion-mnist", tmp_path)
    assert (
        load_dataset("fashion-mnist", "test", data_dir=tmp_path).files[0]["check"] == "matches the published checksum"
    )
    with pytest.raises(DataMismatchError, match=r"t10k-images-idx3-ubyte.gz is fashion-mnist's .*not mnist's"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_a_file_in_the_wrong_place_is_refused(tmp_path, monkeypatch):
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "train", tiny_images(seed=2), np.arange(6, dtype=np.uint8))
    write_split(tmp_path, spec, "test", tiny_images(seed=3), np.arange(6, dtype=np.uint8))
    _fake_published(monkeypatch, "mnist", tmp_path)
    images = tmp_path / spec.files[("train", "images")]
    (tmp_path / spec.files[("test", "images")]).write_bytes(images.read_bytes())  # train images as test images
    with pytest.raises(DataMismatchError, match="is mnist's train-images-idx3-ubyte.gz, not mnist's t10k-images"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_unknown_copies_warn_and_are_recorded(tmp_path, monkeypatch):
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "test", tiny_images(), np.arange(6, dtype=np.uint8))  # not the published MNIST
    with pytest.warns(UserWarning, match="does not match the published checksum of mnist's t10k-images"):
        data = load_dataset("mnist", "test", data_dir=tmp_path)
    record = data.files[0]
    assert record["check"].startswith("MISMATCH") and len(record["sha256"]) == 64
    assert (
        record["content_sha256"]
        == hashlib.sha256(gzip.decompress((tmp_path / spec.files[("test", "images")]).read_bytes())).hexdigest()
    )
    emnist = catalog.IDX_DATASETS["emnist-letters"]  # nothing published per file: recorded, not judged
    write_split(tmp_path / "e", emnist, "train", tiny_images(2), np.array([1, 2], dtype=np.uint8))
    assert (
        load_dataset("emnist-letters", "train", data_dir=tmp_path / "e").files[0]["check"]
        == "no published checksum to compare with"
    )


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_matches_and_is_not_mnist(tmp_path, monkeypatch):
    # Debian's gzip files differ from the published ones (no file name in the
    # header) but their content is the published content.
    train, test = load_splits("fashion-mnist", ("train", "test"), data_dir=FASHION_DIR)
    assert {r["check"] for r in train.files + test.files} == {"matches the published checksum"}
    with pytest.raises(DataMismatchError, match="is fashion-mnist's t10k-images-idx3-ubyte.gz, not mnist's"):
        load_dataset("mnist", "test", data_dir=FASHION_DIR)


def test_builtin_and_blobs_provenance_and_option_errors():
    assert load_dataset("digits", "test").files[0]["file"] == "sklearn.datasets.load_digits"
    blobs = load_dataset("blobs", "train", n_samples=400, centers=4)
    assert blobs.files[0]["options"]["centers"] == 4 and blobs.files[0]["options"]["n_features"] == 32
    with pytest.raises(ValueError, match=r"blobs: unknown option\(s\) n_sample; the options are n_samples"):
        load_dataset("blobs", "train", n_sample=400)
    with pytest.raises(ValueError, match="blobs: cluster_std must be a finite number > 0"):
        load_dataset("blobs", "train", cluster_std=-1.0)


def test_each_builtin_dataset_is_one_catalog_entry():
    """A built-in dataset is one entry in the catalog naming its functions in
    snnl.data.builtin; loading, options and provenance come from the entry."""
    from snnl.data import builtin
    from snnl.data.catalog import BUILTIN_DATASETS

    for name, spec in BUILTIN_DATASETS.items():
        assert spec.name == name and callable(getattr(builtin, spec.loader))
        assert spec.options is None or callable(getattr(builtin, spec.options))
        data = load_dataset(name, "test")
        assert data.files[0]["file"] == spec.source and data.image_shape == spec.image_shape
        assert len(data.classes) == len(np.unique(data.y))


@pytest.mark.parametrize(
    "name,shape,classes", [("iris", (150, 4), 3), ("wine", (178, 13), 3), ("breast-cancer", (569, 30), 2)]
)
def test_the_tabular_sets_that_ship_with_scikit_learn(name, shape, classes):
    # min-max scaled to [0, 1] over the whole set, a fixed stratified 75/25 split, no image shape
    train, test = load_splits(name, ("train", "test"))
    assert len(train) + len(test) == shape[0] and train.x.shape[1] == shape[1] == test.x.shape[1]
    assert train.n_classes == classes and train.image_shape is None and train.x.dtype == np.float32
    both = np.concatenate([train.x, test.x])
    assert both.min() == 0.0 and both.max() == 1.0
    counts = np.bincount(train.y) / np.bincount(np.concatenate([train.y, test.y]))
    assert np.allclose(counts, 0.75, atol=0.02)
    again = load_splits(name, ("train",))[0]
    assert np.array_equal(again.x, train.x)


def test_an_empty_split_names_its_file(tmp_path):
    # (numpy's "cannot reshape array of size 0" before)
    spec = catalog.IDX_DATASETS["mnist"]
    write_split(tmp_path, spec, "train", tiny_images(0), np.zeros(0, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="train-images-idx3-ubyte.gz: the train split holds no images"):
        load_dataset("mnist", "train", data_dir=tmp_path)
