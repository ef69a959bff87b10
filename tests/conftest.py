import os

import pytest
import torch

# The Triton interpreter must be chosen before Triton is first imported: with no
# GPU, the kernels run on CPU tensors through it (that is how CI tests them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

from snnl.loss import registry  # noqa: E402  (after the interpreter is chosen)


@pytest.fixture(params=list(registry.BACKENDS))
def backend(request):
    """Every backend of the registry, the fused one under the Triton
    interpreter without a GPU: a backend added there is tested here."""
    if request.param == "triton":
        pytest.importorskip("triton")
    return request.param


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiled(monkeypatch):
    """The CPU path's tiles (its operator) at every batch size: the eager
    paths for batches that fit one tile (``blocked.lean``, ``blocked.lean_rows``) off."""
    from snnl.loss.backends.blocked import lean, lean_rows

    monkeypatch.setattr(lean, "fits", lambda inputs: False)
    monkeypatch.setattr(lean_rows, "fits", lambda inputs: False)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles small enough that the tests' batches span several of them: 7-row
    blocks on the CPU path (and chunks of 5 far rows against 7 keys in its
    exact pass); 16 x 16 tiles and 64-wide feature chunks for the
    fused kernels (d > 64 takes their chunked path; the interpreter's time
    grows with the square of the number of chunks)."""
    from snnl.loss.backends import triton
    from snnl.loss.backends.blocked import far, tiles

    monkeypatch.setattr(tiles, "BLOCK_ROWS", 7)
    monkeypatch.setattr(far, "EXACT_ROWS", 5)
    monkeypatch.setattr(far, "EXACT_KEYS", 7)
    try:
        from snnl.kernels.configs import TileConfig
    except ImportError:  # no Triton: its tests are skipped
        return
    monkeypatch.setattr(triton, "CONFIG", TileConfig(16, 16, 64))
