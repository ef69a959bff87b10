"""The soft nearest neighbor loss: public function, module, operators and backends.

- ``functional``: ``soft_nearest_neighbor_loss`` (the forms of the loss, checks, reduction)
- ``module``: ``SNNLoss``
- ``options``: what every backend receives, the batch (``Inputs``) and the options (``LossOptions``)
- ``registry``: the one list of backends
- ``ops``: the fast backends as torch.library operators, with autograd
- ``backends``: ``reference`` (the oracle), ``blocked`` (the CPU path, a package: its tiles,
  far-row pass and worker threads), ``triton`` (the fused kernels)
- ``rowwise``: the per-row algebra every backend shares
- ``validation``: argument checks
"""

from .forms import ntxent_loss, supcon_loss
from .functional import soft_nearest_neighbor_loss
from .module import SNNLoss

__all__ = ["soft_nearest_neighbor_loss", "supcon_loss", "ntxent_loss", "SNNLoss"]
