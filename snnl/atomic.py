"""Writing files so that a reader never sees half of one: the one helper every writer uses.

``atomic_path(path)`` gives a fresh temporary name beside ``path`` (unique, so
that two writers never share one, and ending in ``path``'s suffix, which
numpy and matplotlib read the format from); when the block ends without an
error the file is renamed onto ``path`` in one step, otherwise it is removed.
A crash at any moment leaves the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name no other writer picks; the writer creates the file, so it gets the
    # usual permissions (mkstemp's would be owner-only)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
