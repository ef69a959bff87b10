"""The fused Triton kernels of the loss.

- ``layout``: what the kernels take (``Side``, one side of the pairs; ``Math``,
  how a tile's logits are computed) and the operands' layout
- ``tiles``: the ``@triton.jit`` helpers every pair kernel is made of
- ``pair_kernels``: the forward and backward pair kernels and their launchers
- ``rows``: the O(b * d) kernels around them (operands, finishing passes)
- ``configs``: every choice of the compiled code (tiles, warps, stages,
  candidates for autotuning, the split of the key range), and ``Launch``

Importing a module of this package imports Triton (this file does not: it
holds the one accumulation-dtype rule every backend uses); the loss layer
imports them only when the ``triton`` backend runs.  The tools
that compile, model and count these kernels are ``snnl.kernel_tools``.
"""

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the loss computes and accumulates in, on every backend: fp64 for
    fp64 inputs, else fp32 (half inputs are accumulated in fp32; the fused
    kernels feed them to the tensor cores as they are).  The one rule
    (``snnl.loss.rowwise.compute_dtype`` is this)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
