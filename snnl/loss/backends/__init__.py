"""The loss's implementations, one module per backend key (``snnl.loss.registry``
lists them): ``reference`` (plain PyTorch, the oracle), ``blocked`` (the CPU
path) and ``triton`` (the fused kernels)."""
