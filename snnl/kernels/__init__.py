"""The fused Triton kernels of the loss.

- ``tiles``: the ``@triton.jit`` helpers every pair kernel is made of
- ``pair_kernels``: the forward and backward pair kernels and their launchers
- ``rows``: the O(b * d) kernels around them (operands, finishing passes)
- ``configs``: every choice of the compiled code (tiles, warps, stages,
  candidates for autotuning, the split of the key range), and ``Launch``

Importing a module of this package imports Triton (this file does not); the
loss layer imports them only when the ``triton`` backend runs.  The tools
that compile, model and count these kernels are ``snnl.kernel_tools``.
"""

# F.normalize's floor on a row's norm: every backend normalises as it does
# (the reference through F.normalize itself)
NORM_EPS = 1e-12
