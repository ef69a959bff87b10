"""Where dataset files come from, in this order:

1. an explicit data directory (``--data-dir``; the files in it or in its
   ``<name>/`` folder), else ``$SNNL_DATA/<name>``;
2. well-known system locations (``/usr/share/datasets/<name>``, where the
   Debian package ``dataset-fashion-mnist`` puts Fashion-MNIST);
3. the cache directory (``$SNNL_CACHE``, else ``$XDG_CACHE_HOME/snnl``, else
   ``~/.cache/snnl``), filled by an optional download from the official
   sources whose checksums are verified before a file is moved into place.

Files are accepted gzipped or uncompressed, and both files of a split must come
from the same directory.  A download writes to a temporary file beside the
target and renames it only once the checksum matches, so the cache never holds
a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from .catalog import IdxDataset, RemoteFile

SYSTEM_DIRS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine (and were not downloaded)."""


class ChecksumError(OSError):
    """A downloaded file does not match its published checksum."""


def cache_dir() -> Path:
    if os.environ.get("SNNL_CACHE"):
        return Path(os.environ["SNNL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snnl"


def search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories to look in for dataset ``name``, in order.  Only an explicit
    ``data_dir`` is also searched itself: elsewhere files must sit under
    ``<root>/<name>/``, because MNIST and Fashion-MNIST share file names."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.extend([Path(data_dir) / name, Path(data_dir)])
    elif os.environ.get("SNNL_DATA"):
        dirs.append(Path(os.environ["SNNL_DATA"]) / name)
    dirs.extend(root / name for root in SYSTEM_DIRS)
    dirs.append(cache_dir() / name)
    return dirs


def _candidates(directory: Path, file_name: str) -> list[Path]:
    plain = file_name[:-3] if file_name.endswith(".gz") else file_name
    return [directory / file_name, directory / plain]


def find_files(spec: IdxDataset, split: str, data_dir=None) -> dict[str, Path] | None:
    """Paths of the split's images and labels, both from the same directory."""
    for directory in search_dirs(spec.name, data_dir):
        found = {}
        for kind in ("images", "labels"):
            path = next((p for p in _candidates(directory, spec.files[(split, kind)]) if p.is_file()), None)
            if path is None:
                break
            found[kind] = path
        if len(found) == 2:
            return found
    return None


def not_found_message(spec: IdxDataset, split: str, data_dir) -> str:
    names = [spec.files[(split, "images")], spec.files[(split, "labels")]]
    looked = "\n".join(f"  {d}" for d in search_dirs(spec.name, data_dir))
    return (
        f"{spec.name} ({split}): {' and '.join(names)} not found (gzipped or not) in:\n{looked}\n"
        f"Get them from {spec.home} and pass --data-dir DIR (or set SNNL_DATA), "
        f"or pass --download (download=True) to fetch them into {cache_dir() / spec.name}."
    )


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


def _atomic_target(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def download(remote: RemoteFile, target: Path, *, timeout: float = 60.0, progress=None) -> Path:
    """Fetch ``remote`` to ``target`` (atomically), trying each mirror in turn."""
    errors = []
    for url in remote.urls:
        tmp = _atomic_target(target)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    if progress is not None:
                        progress(len(block))
            verify(tmp, remote)
            os.replace(tmp, target)
            return target
        except (OSError, ValueError) as error:  # URLError, timeouts and ChecksumError are OSErrors
            errors.append(f"{url}: {error}")
        finally:
            if tmp.exists():
                tmp.unlink()
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
            tmp = _atomic_target(target)
            try:
                with zf.open(f"{spec.archive_member_dir}/{name}") as src, open(tmp, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    tmp.unlink()
    return target_dir
