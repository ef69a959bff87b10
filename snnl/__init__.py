"""snnl: the soft nearest neighbor loss and clustering-friendly representation learning."""

from .estimator import SNNLKMeans
from .loss import SNNLoss, soft_nearest_neighbor_loss
from .temperature import AnnealingTemperature, FixedTemperature

__version__ = "0.2.0.dev0"  # the one version source (pyproject.toml reads it)

__all__ = [
    "soft_nearest_neighbor_loss",
    "SNNLoss",
    "AnnealingTemperature",
    "FixedTemperature",
    "SNNLKMeans",
    "__version__",
]
