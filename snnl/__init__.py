"""snnl: the soft nearest neighbor loss and clustering-friendly representation learning."""

from .estimator import SNNLKMeans
from .loss import SNNLoss, soft_nearest_neighbor_loss
from .temperature import AnnealingTemperature, FixedTemperature

__version__ = "0.1.0"

__all__ = [
    "soft_nearest_neighbor_loss",
    "SNNLoss",
    "AnnealingTemperature",
    "FixedTemperature",
    "SNNLKMeans",
    "__version__",
]
