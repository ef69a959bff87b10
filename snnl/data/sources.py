"""Where dataset files come from, and whether they are the right ones.

An explicit data directory (``--data-dir``; the files in it or in its
``<name>/`` folder) is used alone: it must exist and hold every file asked
for, or loading is an error; nothing is taken from anywhere else.  Without
one the files are looked for, in this order, in

1. ``$SNNL_DATA/<name>``;
2. well-known system locations (``/usr/share/datasets/<name>``, where the
   Debian package ``dataset-fashion-mnist`` puts Fashion-MNIST);
3. the cache directory (``$SNNL_CACHE``, else ``$XDG_CACHE_HOME/snnl``, else
   ``~/.cache/snnl``), filled by an optional download from the official
   sources whose checksums are verified before a file is moved into place.

All the files loaded together (both splits of a run) come from one directory:
the first that holds every one of them.  Files are accepted gzipped or
uncompressed.  Each file read is checked against the catalog's checksums
(``check_file``): a file known to belong to another dataset, or to be another
file of this one, is refused; an unknown one is a warning.  A download writes
to a temporary file beside the target and renames it only once the checksum
matches, so the cache never holds a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
import zipfile
from pathlib import Path

from ..atomic import atomic_path
from .catalog import IdxDataset, RemoteFile, known_files

SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine (and were not downloaded)."""


class ChecksumError(OSError):
    """A downloaded file does not match its published checksum."""


class DataMismatchError(ValueError):
    """A local file is known to be another dataset's file, or another file of this one."""


def cache_dir() -> Path:
    if os.environ.get("SNNL_CACHE"):
        return Path(os.environ["SNNL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snnl"


def search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories to look in for dataset ``name``, in order.  An explicit
    ``data_dir`` is the only place looked in (its ``<name>/`` folder, then
    itself) and must exist.  Elsewhere files must sit under ``<root>/<name>/``,
    because MNIST and Fashion-MNIST share file names."""
    if data_dir is not None:
        root = Path(data_dir)
        if not root.is_dir():
            raise DatasetNotFoundError(f"the data directory {root} does not exist (--data-dir / data_dir)")
        return [root / name, root]
    dirs: list[Path] = []
    if os.environ.get("SNNL_DATA"):
        dirs.append(Path(os.environ["SNNL_DATA"]) / name)
    dirs.extend(root / name for root in SYSTEM_DIRS)
    dirs.append(cache_dir() / name)
    return dirs


def candidates(directory: Path, file_name: str) -> list[Path]:
    plain = file_name[:-3] if file_name.endswith(".gz") else file_name
    return [directory / file_name, directory / plain]


def locate(names: list[str], directories: list[Path], variants=candidates) -> dict[str, Path] | None:
    """Each of ``names`` from the first directory that holds all of them, or None."""
    for directory in directories:
        found = {}
        for name in names:
            path = next((p for p in variants(directory, name) if p.is_file()), None)
            if path is None:
                break
            found[name] = path
        if len(found) == len(names):
            return found
    return None


def find_files(spec: IdxDataset, splits, data_dir=None) -> dict[tuple[str, str], Path] | None:
    """Paths of the images and labels of every split in ``splits``, all from one directory."""
    wanted = {(split, kind): spec.files[(split, kind)] for split in splits for kind in ("images", "labels")}
    found = locate(list(wanted.values()), search_dirs(spec.name, data_dir))
    return None if found is None else {key: found[name] for key, name in wanted.items()}


def not_found_message(spec: IdxDataset, splits, data_dir) -> str:
    names = [spec.files[(split, kind)] for split in splits for kind in ("images", "labels")]
    dirs = search_dirs(spec.name, data_dir)
    looked = "\n".join(f"  {d}: {_missing(d, names)}" for d in dirs)
    where = (
        "An explicit data directory is used alone: put all of them there, or leave --data-dir out to "
        "search $SNNL_DATA, the system directories and the cache.\n"
        if data_dir is not None
        else ""
    )
    return (
        f"{spec.name} ({', '.join(splits)}): {', '.join(names)} (gzipped or not) are not all in one of:\n{looked}\n"
        f"{where}Get them from {spec.home} and pass --data-dir DIR (or set SNNL_DATA), "
        f"or pass --download (download=True) to fetch them into {cache_dir() / spec.name}."
    )


def _missing(directory: Path, names: list[str]) -> str:
    if not directory.is_dir():
        return "no such directory"
    absent = [n for n in names if not any(p.is_file() for p in candidates(directory, n))]
    return "missing " + ", ".join(absent) if absent else "complete"


def check_file(
    path: Path, dataset: str, file_name: str, digests: dict, expected_content: str | None, expected_file: str | None
) -> dict:
    """Compare a file's digests (``sha256`` of its bytes, ``content_sha256`` of
    its decompressed content) with the published ones and return the record
    that goes into metrics.json.  A file known as another dataset's (or another
    file of this one) is refused; one that matches nothing known is a warning."""
    record = {"file": str(path), **digests}
    matches_content = expected_content is not None and digests.get("content_sha256") == expected_content
    matches_file = expected_file is not None and digests.get("sha256") == expected_file
    if matches_content or matches_file:
        return {**record, "check": "matches the published checksum"}
    known = known_files()
    other = known.get(digests.get("content_sha256", "")) or known.get(digests.get("sha256", ""))
    if other is not None and other != (dataset, file_name):
        raise DataMismatchError(
            f"{path} is {other[0]}'s {other[1]}, not {dataset}'s {file_name}: check --dataset and --data-dir"
        )
    if expected_content is None and expected_file is None:
        return {**record, "check": "no published checksum to compare with"}
    warnings.warn(
        f"{path} does not match the published checksum of {dataset}'s {file_name}: "
        "a modified or different copy; results may not compare with published ones",
        stacklevel=3,
    )
    return {**record, "check": "MISMATCH: differs from the published file"}


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise ChecksumError unless ``path`` matches the published size and digests."""
    if remote.size is not None and path.stat().st_size != remote.size:
        raise ChecksumError(f"{remote.name}: {path.stat().st_size} bytes, expected {remote.size}")
    for algorithm in ("sha256", "md5"):
        expected = getattr(remote, algorithm)
        if expected is not None and _digest(path, algorithm) != expected:
            raise ChecksumError(f"{remote.name}: {algorithm} mismatch (expected {expected})")


def download(remote: RemoteFile, target: Path, *, timeout: float = 60.0, progress=None) -> Path:
    """Fetch ``remote`` to ``target`` (atomically), trying each mirror in turn."""
    errors = []
    for url in remote.urls:
        try:
            with atomic_path(target) as tmp:
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                        if progress is not None:
                            progress(len(block))
                verify(tmp, remote)
            return target
        except (OSError, ValueError) as error:  # URLError, timeouts and ChecksumError are OSErrors
            errors.append(f"{url}: {error}")
    raise OSError(f"could not download {remote.name}:\n  " + "\n  ".join(errors))


def download_dataset(spec: IdxDataset, *, timeout: float = 60.0) -> Path:
    """Download (and, for EMNIST, extract) a dataset into the cache; returns its directory."""
    target_dir = cache_dir() / spec.name
    if spec.archive_member_dir is None:
        for remote in spec.remote:
            target = target_dir / remote.name
            if not target.is_file():
                download(remote, target, timeout=timeout)
        return target_dir
    archive = spec.remote[0]
    archive_path = cache_dir() / "archives" / archive.name
    if not archive_path.is_file():
        download(archive, archive_path, timeout=timeout)
    with zipfile.ZipFile(archive_path) as zf:
        for name in spec.files.values():
            target = target_dir / name
            if target.is_file():
                continue
            with (
                atomic_path(target) as tmp,
                zf.open(f"{spec.archive_member_dir}/{name}") as src,
                open(tmp, "wb") as out,
            ):
                while block := src.read(1 << 20):
                    out.write(block)
    return target_dir
