#!/usr/bin/env bash
# The README's test command: install the CPU build of torch, the package with
# its test extras, and run the test suite.  Run it inside a virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch==2.13.0 first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install torch==2.13.0
python -m pip install -e ".[dev]"
python -m pytest "$@"
