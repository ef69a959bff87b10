import os

import pytest
import torch

# The Triton interpreter must be chosen before Triton is first imported: with no
# GPU, the kernels run on CPU tensors through it (that is how CI tests them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()

# The blocked backend's elementwise work runs eagerly in the tests: the same
# functions, without a torch.compile per shape and dtype (minutes on a cold
# machine).  tests/test_loss_blocked.py switches compilation on where it
# checks the compiled code against the reference.
os.environ.setdefault("SNNL_COMPILE", "0")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
