"""The soft nearest neighbor loss: public function, module, operators and backends.

- ``functional``: ``soft_nearest_neighbor_loss`` (the forms of the loss, checks, reduction)
- ``module``: ``SNNLoss``
- ``registry``: the one list of backends
- ``ops``: the fast backends as torch.library operators, with autograd
- ``backends``: ``reference`` (the oracle), ``blocked`` (the CPU path), ``triton`` (the fused kernels)
- ``rowwise``, ``shared_exp``: the per-row and per-pair algebra the backends share
- ``validation``: argument checks; ``workers``: the CPU path's worker threads
"""

from .functional import soft_nearest_neighbor_loss
from .module import SNNLoss

__all__ = ["soft_nearest_neighbor_loss", "SNNLoss"]
