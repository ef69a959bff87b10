"""Writing files so that a reader never sees half of one: the one helper every writer uses.

``atomic_path(path)`` gives a fresh temporary name beside ``path`` (unique, so
that two writers never share one, and ending in ``path``'s suffix, which
numpy and matplotlib read the format from); when the block ends without an
error the file is renamed onto ``path`` in one step, otherwise it is removed.
A crash at any moment leaves the old file or the new one, never a mixture;
a temporary a killed writer left behind is found by ``stale_temporaries``
(the runs remove them when they claim their directory).  A write that fails
says which file and why: a full disk as such (torch's own message for it is
"enforce fail at inline_container.cc ... unexpected pos").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

# a temporary's name: .<stem>.<pid>-<8 hex>.part<suffix>
_TEMPORARY = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.part(\.[^.]*)?$")
# free bytes below which a failed write is taken for a full disk
_FULL = 1 << 20


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
    except OSError as error:
        raise _named(error, path) from error
    except RuntimeError as error:  # torch's writer reports a failed write so
        if "inline_container" in str(error) or "PytorchStreamWriter" in str(error):
            raise _named(error, path) from error
        raise
    finally:
        if temporary.exists():
            temporary.unlink()


def _named(error: Exception, path: Path) -> OSError:
    """The failure of writing ``path``, named: a full disk as such."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < _FULL):
        return OSError(
            errno.ENOSPC, f"no space left on the device while writing {path} ({free} bytes free); free some space "
            "and run again (with --resume for a run: what was written before is intact)"
        )  # fmt: skip
    return OSError(getattr(error, "errno", None) or errno.EIO, f"writing {path} failed: {error}")


def stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """The temporaries under ``directory`` whose writer is no longer running
    (killed mid-write: the file they were replacing is intact)."""
    stale = []
    for candidate in Path(directory).rglob(".*.part*"):
        match = _TEMPORARY.match(candidate.name)
        if match and candidate.is_file() and not _running(int(match.group(1))):
            stale.append(candidate)
    return stale


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
