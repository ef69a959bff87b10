"""Datasets: named IDX sets (MNIST, Fashion-MNIST, EMNIST), the text-format
sets of the N2D paper (USPS, pendigits, HAR) and built-in ones.

    >>> from snnl.data import load_dataset, labelled_subset
    >>> train = load_dataset("digits", "train")
    >>> train.x.shape, train.n_classes
    ((1347, 64), 10)

Every dataset is a ``Dataset``: ``x`` (n, d) float32 in [0, 1], flattened,
``y`` (n,) int64 class ids 0..k-1, and the class names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from . import builtin, sources
from .catalog import IDX_DATASETS, IdxDataset
from .idx import IdxFormatError, read_idx
from .sources import ChecksumError, DatasetNotFoundError
from .text_formats import TEXT_DATASETS, load_text_dataset

BUILTIN = ("digits", "blobs")
SPLITS = ("train", "test")

__all__ = [
    "Dataset",
    "load_dataset",
    "labelled_subset",
    "dataset_names",
    "train_and_test",
    "IdxFormatError",
    "DatasetNotFoundError",
    "ChecksumError",
]


@dataclass
class Dataset:
    name: str
    split: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    image_shape: tuple[int, int] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> "Dataset":
        return Dataset(self.name, self.split, self.x[indices], self.y[indices], self.classes, self.image_shape)


def dataset_names() -> list[str]:
    return [*BUILTIN, *IDX_DATASETS, *TEXT_DATASETS]


def _load_idx(spec: IdxDataset, split: str, data_dir, download: bool) -> Dataset:
    paths = sources.find_files(spec, split, data_dir)
    if paths is None and download:
        sources.download_dataset(spec)
        paths = sources.find_files(spec, split, data_dir)
    if paths is None:
        raise DatasetNotFoundError(sources.not_found_message(spec, split, data_dir))
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or images.shape[1:] != spec.image_shape:
        raise IdxFormatError(
            f"{paths['images']}: expected images of shape (n, {spec.image_shape[0]}, {spec.image_shape[1]}), "
            f"got {images.shape}"
        )
    if labels.ndim != 1:
        raise IdxFormatError(f"{paths['labels']}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(
            f"{paths['images']} holds {len(images)} images but {paths['labels']} holds {len(labels)} labels"
        )
    if spec.transposed:
        images = images.transpose(0, 2, 1)
    y = labels.astype(np.int64) - spec.label_offset
    if len(y) and (y.min() < 0 or y.max() >= len(spec.classes)):
        raise IdxFormatError(
            f"{paths['labels']}: labels span {y.min() + spec.label_offset}..{y.max() + spec.label_offset}, "
            f"outside the {len(spec.classes)} classes of {spec.name}"
        )
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return Dataset(spec.name, split, x, y, spec.classes, spec.image_shape)


def load_dataset(name: str, split: str = "train", *, data_dir=None, download: bool = False, **options) -> Dataset:
    """Load a split (``"train"`` or ``"test"``) of a named dataset.

    ``data_dir`` / ``download`` apply to the IDX datasets (see ``snnl.data.sources``
    for where files are looked for).  ``options`` are the ``blobs`` parameters
    (n_samples, n_features, centers, cluster_std, seed).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if options and name != "blobs":
        raise TypeError(f"{name} takes no options; got {sorted(options)}")
    if name == "digits":
        x, y = builtin.digits(split)
        return Dataset(name, split, x, y, tuple("0123456789"), (8, 8))
    if name == "blobs":
        x, y = builtin.blobs(split, **options)
        return Dataset(name, split, x, y, tuple(str(i) for i in range(int(y.max()) + 1)), None)
    if name in TEXT_DATASETS:
        x, y, spec = load_text_dataset(name, split, data_dir)
        return Dataset(name, split, x, y, spec.classes, spec.image_shape)
    if name not in IDX_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(dataset_names())}")
    return _load_idx(IDX_DATASETS[name], split, data_dir, download)


def train_and_test(name: str, *, data_dir=None, download: bool = False, **options) -> Dataset:
    """Both splits in one dataset (split "all", training rows first): N2D
    clusters everything it is given."""
    train = load_dataset(name, "train", data_dir=data_dir, download=download, **options)
    test = load_dataset(name, "test", data_dir=data_dir, download=download, **options)
    return Dataset(name, "all", np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y]),
                   train.classes, train.image_shape)


def labelled_subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded, class-stratified subset of ``n`` labelled examples (all if None)."""
    if n is None or n == len(dataset):
        return dataset
    if int(n) != n or n < 1:
        raise ValueError(f"the labelled subset size must be a positive integer, got {n!r}")
    if n > len(dataset):
        raise ValueError(f"cannot take {n} labelled examples from the {len(dataset)} of {dataset.name} ({dataset.split})")
    indices = np.arange(len(dataset))
    counts = np.bincount(dataset.y)
    stratify = dataset.y if n >= dataset.n_classes and counts[counts > 0].min() >= 2 else None
    chosen, _ = train_test_split(indices, train_size=int(n), stratify=stratify, random_state=seed)
    return dataset.subset(np.sort(chosen))
