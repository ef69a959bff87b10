"""Datasets: named IDX sets (MNIST, Fashion-MNIST, EMNIST), the text-format
sets of the N2D paper (USPS, pendigits, HAR) and built-in ones.

    >>> from snnl.data import load_dataset, labelled_subset
    >>> train = load_dataset("digits", "train")
    >>> train.x.shape, train.n_classes
    ((1347, 64), 10)

Every dataset is a ``Dataset``: ``x`` (n, d) float32 in [0, 1], flattened,
``y`` (n,) int64 class ids 0..k-1, the class names, and ``files``: what was
read, with SHA-256 digests and the outcome of the checksum check (see
``snnl.data.sources``), for metrics.json.  ``load_splits`` loads several
splits from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import validate
from . import builtin, sources
from .catalog import BUILTIN_DATASETS, IDX_DATASETS, TEXT_DATASETS, BuiltinDataset, IdxDataset, dataset_names
from .idx import IdxFormatError, read_idx
from .sources import ChecksumError, DataMismatchError, DatasetNotFoundError
from .text_formats import load_text_dataset

SPLITS = ("train", "test")

__all__ = [
    "Dataset",
    "load_dataset",
    "load_splits",
    "labelled_subset",
    "dataset_names",
    "train_and_test",
    "combined",
    "IdxFormatError",
    "DatasetNotFoundError",
    "ChecksumError",
    "DataMismatchError",
]


@dataclass
class Dataset:
    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    image_shape: tuple[int, int] | None = None
    files: tuple = ()  # provenance: what was read, with digests and the checksum check

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(
            self.name, self.split, self.x[indices], self.y[indices], self.classes, self.image_shape, self.files
        )


def _read_checked(path, spec: IdxDataset, file_name: str) -> tuple[np.ndarray, dict]:
    digests: dict[str, str] = {}
    array = read_idx(path, digests)
    expected_file = next((r.sha256 for r in spec.remote if r.name == file_name), None)
    record = sources.check_file(path, spec.name, file_name, digests, spec.content_sha256.get(file_name), expected_file)
    return array, record


def _idx_split(spec: IdxDataset, split: str, paths: dict) -> Dataset:
    images, image_record = _read_checked(paths[(split, "images")], spec, spec.files[(split, "images")])
    labels, label_record = _read_checked(paths[(split, "labels")], spec, spec.files[(split, "labels")])
    image_path, label_path = paths[(split, "images")], paths[(split, "labels")]
    if images.ndim != 3 or images.shape[1:] != spec.image_shape:
        raise IdxFormatError(
            f"{image_path}: expected images of shape (n, {spec.image_shape[0]}, {spec.image_shape[1]}), "
            f"got {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{label_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if len(images) == 0:
        raise IdxFormatError(f"{image_path}: the {split} split holds no images (an IDX file of shape {images.shape})")
    if spec.transposed:
        images = images.transpose(0, 2, 1)
    y = labels.astype(np.int64) - spec.label_offset
    if len(y) and (y.min() < 0 or y.max() >= len(spec.classes)):
        raise IdxFormatError(
            f"{label_path}: labels span {y.min() + spec.label_offset}..{y.max() + spec.label_offset}, "
            f"outside the {len(spec.classes)} classes of {spec.name}"
        )
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return Dataset(spec.name, split, x, y, spec.classes, spec.image_shape, (image_record, label_record))


def _load_idx(spec: IdxDataset, splits, data_dir, download: bool) -> list[Dataset]:
    paths = sources.find_files(spec, splits, data_dir)
    if paths is None and download and data_dir is None:
        sources.download_dataset(spec)
        paths = sources.find_files(spec, splits, data_dir)
    if paths is None:
        raise DatasetNotFoundError(sources.not_found_message(spec, splits, data_dir))
    return [_idx_split(spec, split, paths) for split in splits]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_splits(name: str, splits=SPLITS, *, data_dir=None, download: bool = False, **options) -> list[Dataset]:
    """Several splits of a named dataset, their files all from one directory
    (so that a run never trains on one copy and tests on another).

    ``data_dir``: the only place looked in when given (see
    ``snnl.data.sources``); ``download`` applies to the IDX datasets when no
    ``data_dir`` is given.  ``options`` are the ``blobs`` parameters
    (n_samples, n_features, centers, cluster_std, seed).
    """
    splits = tuple(splits)
    for split in splits:
        _check_split(split)
    options = dataset_options(name, options)
    if name in BUILTIN_DATASETS:
        return [_builtin_split(BUILTIN_DATASETS[name], split, options) for split in splits]
    if name in TEXT_DATASETS:
        return [
            Dataset(name, split, x, y, spec.classes, spec.image_shape, records)
            for split, (x, y, spec, records) in zip(splits, load_text_dataset(name, splits, data_dir))
        ]
    if name not in IDX_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(dataset_names())}")
    return _load_idx(IDX_DATASETS[name], splits, data_dir, download)


def dataset_options(name: str, options: dict) -> dict:
    """The options of the built-in dataset ``name`` (``blobs``' parameters),
    checked and completed with their defaults; ``{}`` for a dataset that
    takes none, which is refused any."""
    spec = BUILTIN_DATASETS.get(name)
    if spec is None or spec.options is None:
        if options:
            raise ValueError(f"{name} takes no dataset options; got {', '.join(sorted(options))}")
        return {}
    return getattr(builtin, spec.options)(**options)


def _builtin_split(spec: BuiltinDataset, split: str, options: dict) -> Dataset:
    import sklearn  # here, not at import: the data package's names load without it

    x, y = getattr(builtin, spec.loader)(split, **options)
    record = {"file": spec.source, **({"options": options} if options else {}), "scikit-learn": sklearn.__version__}
    classes = spec.classes if spec.classes is not None else tuple(str(i) for i in range(int(y.max()) + 1))
    return Dataset(spec.name, split, x, y, classes, spec.image_shape, (record,))


def load_dataset(name: str, split: str = "train", *, data_dir=None, download: bool = False, **options) -> Dataset:
    """One split (``"train"`` or ``"test"``) of a named dataset (see ``load_splits``)."""
    _check_split(split)
    return load_splits(name, (split,), data_dir=data_dir, download=download, **options)[0]


def train_and_test(name: str, *, data_dir=None, download: bool = False, **options) -> Dataset:
    """Both splits in one dataset (split "all", training rows first): N2D
    clusters everything it is given."""
    return combined(*load_splits(name, ("train", "test"), data_dir=data_dir, download=download, **options))


def combined(train: Dataset, test: Dataset) -> Dataset:
    """The two splits of a dataset as one (split "all", training rows first)."""
    return Dataset(
        train.name,
        "all",
        np.concatenate([train.x, test.x]),
        np.concatenate([train.y, test.y]),
        train.classes,
        train.image_shape,
        train.files + test.files,
    )


def labelled_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded, class-stratified subset of ``n`` labelled examples (all if None)."""
    if n is None or n == len(dataset):
        return dataset
    n = validate.integer("the labelled subset size", n)
    if n > len(dataset):
        raise ValueError(
            f"cannot take {n} labelled examples from the {len(dataset)} of {dataset.name} ({dataset.split})"
        )
    indices = np.arange(len(dataset))
    counts = np.bincount(dataset.y)
    stratify = dataset.y if n >= dataset.n_classes and counts[counts > 0].min() >= 2 else None
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(indices, train_size=int(n), stratify=stratify, random_state=seed)
    return dataset.subset(np.sort(chosen))
