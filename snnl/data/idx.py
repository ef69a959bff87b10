"""Reader and writer for IDX files (the MNIST family's format), gzip or raw.

Layout: two zero bytes, a type byte, the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order, big-endian.
Every way a file can be wrong raises ``IdxFormatError`` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# type byte -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxFormatError(ValueError):
    """A file that is not a well-formed IDX file."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as error:  # gzip raises these for corrupt or cut-off streams
        raise IdxFormatError(f"{path}: cannot be decompressed ({error}); the file is damaged or truncated") from None


def read_idx(path: str | os.PathLike, digests: dict | None = None) -> np.ndarray:
    """The array stored in an IDX file (native byte order).  ``digests``, if
    given, receives the SHA-256 of the file (``sha256``) and of its
    decompressed content (``content_sha256``)."""
    path = Path(path)
    data = _read_bytes(path)
    if digests is not None:
        digests["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        digests["content_sha256"] = hashlib.sha256(data).hexdigest()
    if len(data) < 4:
        raise IdxFormatError(f"{path}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{path}: bad magic number {data[:4].hex()} (an IDX file starts with two zero bytes)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise IdxFormatError(f"{path}: unknown IDX data type 0x{type_code:02x}")
    if ndim == 0:
        raise IdxFormatError(f"{path}: IDX header declares 0 dimensions")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes, {header_end} expected)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_end
    if payload < expected:
        raise IdxFormatError(f"{path}: truncated: shape {shape} needs {expected} data bytes, the file has {payload}")
    if payload > expected:
        raise IdxFormatError(f"{path}: {payload - expected} unexpected bytes after the data of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress``, default: name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array).astype(IDX_TYPES[codes[native]]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
