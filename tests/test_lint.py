"""The tree passes the linter configured in pyproject.toml ([tool.ruff]), so
an unused import or an unsorted import block fails here, not in review."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_passes_its_linter():
    pytest.importorskip("ruff", reason="ruff comes with the dev extra (pip install -e '.[dev]')")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
