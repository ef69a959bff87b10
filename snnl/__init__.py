"""snnl: the soft nearest neighbor loss and clustering-friendly representation learning.

The names below load on first use (PEP 562), so that importing a part of the
package (the ``snnl`` command's option parser, ``snnl.train.config``) does not
import torch and scikit-learn first.
"""

import importlib

__version__ = "0.2.0.dev0"  # the one version source (pyproject.toml reads it)

_PUBLIC = {
    "soft_nearest_neighbor_loss": "snnl.loss",
    "SNNLoss": "snnl.loss",
    "AnnealingTemperature": "snnl.train.temperature",
    "FixedTemperature": "snnl.train.temperature",
    "SNNLKMeans": "snnl.estimators",
    "N2D": "snnl.estimators",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'snnl' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
