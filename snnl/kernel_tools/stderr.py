"""Tools' own noise kept off the report: lines that external programs write
straight to the process's stderr (file descriptor 2, so Python's sys.stderr
cannot filter them) and that say nothing about the kernels."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

# nvdisasm, run by Triton to read the SASS, warns on every kernel of CUDA 12's ELF
NVDISASM_FORMAT = "nvdisasm warning : Disassembling Std Elf to Old format"
# the torch profiler's (Kineto's) start/stop lines
PROFILER = ("STAGE:", "USDT:", "[W ", "ActivityProfilerController")


@contextlib.contextmanager
def without_lines(*prefixes: str):
    """Run the block with fd 2 captured; afterwards, write back every line
    that starts with none of ``prefixes`` (real errors stay visible)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.lstrip().startswith(prefixes):
                    sys.stderr.write(line)
            sys.stderr.flush()
