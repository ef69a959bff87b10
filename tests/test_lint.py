"""The tree passes the linter, the formatter and the type checker configured
in pyproject.toml ([tool.ruff], [tool.mypy]), so an unused import, an
unformatted block or a None passed where a tensor is expected fails here, not
in review.  CI also runs them itself (.ci/run), ruff before the install."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", [("check",), ("format", "--check")], ids=["lint", "format"])
def test_the_tree_passes_ruff(command):
    pytest.importorskip("ruff", reason="ruff comes with the dev extra (pip install -e '.[dev]')")
    done = _run("ruff", *command, "--no-cache", str(ROOT))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow  # about 30 s on the 2-core Xeon without a cache
def test_the_package_passes_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy comes with the dev extra (pip install -e '.[dev]')")
    done = _run("mypy", "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (ROOT / "snnl" / "py.typed").is_file(), "the package declares its types (PEP 561)"
