"""The other datasets of the N2D paper, read from their usual distribution files.

- ``usps``: the 9,298 16x16 USPS digits as distributed in LIBSVM format
  (``usps`` / ``usps.bz2`` with 7,291 training rows, ``usps.t`` /
  ``usps.t.bz2`` with 2,007 test rows; labels 1-10 for digits 0-9, features
  in [-1, 1]).
- ``pendigits``: UCI Pen-Based Recognition of Handwritten Digits
  (``pendigits.tra`` 7,494 rows and ``pendigits.tes`` 3,498 rows of 16
  integers in 0-100 and the digit).
- ``har``: UCI Human Activity Recognition Using Smartphones (the ``UCI HAR
  Dataset`` folder: ``train/X_train.txt``, ``train/y_train.txt``,
  ``test/X_test.txt``, ``test/y_test.txt``; 561 features in [-1, 1], six
  activities labelled 1-6).

Features are scaled to [0, 1]; labels become 0-based.  Files are looked for
like the IDX datasets' (``--data-dir``, ``$SNNL_DATA/<name>``, system dirs,
cache), gzip/bz2-compressed or not where noted; nothing is downloaded.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
from pathlib import Path

import numpy as np

from . import sources
from .catalog import TEXT_DATASETS, TextDataset


def _open_text(path: Path):
    with open(path, "rb") as f:
        head = f.read(3)
    if head[:2] == b"\x1f\x8b":
        return gzip.open(path, "rt")
    if head == b"BZh":
        return bz2.open(path, "rt")
    return open(path)


def _variants(directory: Path, relative: str) -> list[Path]:
    return [directory / candidate for candidate in (relative, relative + ".bz2", relative + ".gz", Path(relative).name)]


def _record(path: Path) -> dict:
    """Provenance of a text file: no checksums are published for these sets."""
    return {
        "file": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "check": "no published checksum to compare with",
    }


def _read_libsvm(path: Path, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                labels.append(int(float(parts[0])))
                row = np.zeros(n_features, dtype=np.float32)
                for item in parts[1:]:
                    index, value = item.split(":")
                    row[int(index) - 1] = float(value)
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}:{number}: not a LIBSVM line with {n_features} features: {line.strip()[:60]!r}"
                ) from None
            rows.append(row)
    return np.stack(rows), np.asarray(labels, dtype=np.int64)


def _read_table(path: Path, delimiter=None) -> np.ndarray:
    with _open_text(path) as f:
        try:
            return np.loadtxt(f, delimiter=delimiter, dtype=np.float64, ndmin=2)
        except ValueError as error:
            raise ValueError(f"{path}: not a numeric table ({error})") from None


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def load_text_dataset(name: str, splits, data_dir=None) -> list[tuple[np.ndarray, np.ndarray, TextDataset, tuple]]:
    """(x, y, spec, file records) per split; all files from one directory."""
    spec = TEXT_DATASETS[name]
    wanted = [relative for split in splits for relative in spec.files[split]]
    found = sources.locate(wanted, sources.search_dirs(spec.name, data_dir), variants=_variants)
    if found is None:
        looked = "\n".join(f"  {d}" for d in sources.search_dirs(spec.name, data_dir))
        raise sources.DatasetNotFoundError(
            f"{name} ({', '.join(splits)}): {', '.join(wanted)} are not all in one of:\n{looked}\n"
            f"Get the files from {spec.home} and pass --data-dir DIR (or set SNNL_DATA)."
        )
    return [
        (
            *_read_split(spec, [found[r] for r in spec.files[split]]),
            spec,
            tuple(_record(found[r]) for r in spec.files[split]),
        )
        for split in splits
    ]


def _read_split(spec: TextDataset, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    x, y = READERS[spec.reader](paths)
    return np.clip(x, 0.0, 1.0).astype(np.float32), y


def read_usps(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    x, labels = _read_libsvm(paths[0], 256)
    _expect(labels.min() >= 1 and labels.max() <= 10, f"{paths[0]}: USPS labels must be 1-10")
    return (x + 1.0) / 2.0, labels - 1


def read_pendigits(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    table = _read_table(paths[0], delimiter=",")
    _expect(table.shape[1] == 17, f"{paths[0]}: expected 17 comma-separated columns, got {table.shape[1]}")
    x, y = table[:, :16] / 100.0, table[:, 16].astype(np.int64)
    _expect(y.min() >= 0 and y.max() <= 9, f"{paths[0]}: pendigits classes must be 0-9")
    return x, y


def read_har(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    x, labels = _read_table(paths[0]), _read_table(paths[1])
    _expect(x.shape[1] == 561, f"{paths[0]}: expected 561 features per row, got {x.shape[1]}")
    _expect(
        labels.shape[1] == 1 and len(labels) == len(x),
        f"{paths[1]}: expected one label per row of {paths[0]} ({len(x)}), got shape {labels.shape}",
    )
    y = labels[:, 0].astype(np.int64) - 1
    _expect(y.min() >= 0 and y.max() <= 5, f"{paths[1]}: HAR activities must be 1-6")
    return (x + 1.0) / 2.0, y


# TextDataset.reader -> the function that reads a split's files into (x, y): features scaled to
# [0, 1] (clipped after), labels from 0.  A new format is one function here and one catalog entry.
READERS = {"usps": read_usps, "pendigits": read_pendigits, "har": read_har}
