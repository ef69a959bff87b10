"""Triton code only: ``@triton.jit`` kernels and the launchers that pick grids
and block sizes.  Importing this package imports Triton; the loss layer does
so lazily, only when the ``triton`` backend is used."""
