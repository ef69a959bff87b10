"""Tools that look at the fused kernels without a GPU; they depend on the loss
layer, which the kernels must not.

- ``lab``: every launch of a loss call compiled for sm_80 / sm_90 (``snnl kernels``)
- ``model``: the analytic GPU performance model built on the compiled code
- ``op_counts``: what a loss call launches and where it synchronises, counted
"""
