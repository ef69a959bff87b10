"""The soft nearest neighbor loss: public function, module and backends.

- ``functional``: ``soft_nearest_neighbor_loss`` (validation, dispatch, reduction)
- ``module``: ``SNNLoss``
- ``reference``: the readable b x b oracle
- ``chunked``: PyTorch, O(b * block) memory, custom backward
- ``fused``: autograd glue for the Triton kernels in ``snnl.kernels``
- ``rowwise``: the per-row algebra all backends share
"""

from .functional import soft_nearest_neighbor_loss
from .module import SNNLoss

__all__ = ["soft_nearest_neighbor_loss", "SNNLoss"]
