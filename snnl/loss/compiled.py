"""``torch.compile`` of small functions, one compilation per variant, with an
eager fallback: how the fast paths fuse their elementwise work.

Used by ``blocked`` (the CPU path's tiles) and ``fused`` (the per-row algebra
around the GPU kernels, so that it costs a few kernels instead of dozens of
small ones).  ``SNNL_COMPILE=0`` runs everything eagerly.
"""

from __future__ import annotations

import os
import types
import warnings

import torch


def compile_enabled() -> bool:
    """Compiled elementwise work unless SNNL_COMPILE=0."""
    return os.environ.get("SNNL_COMPILE", "1") != "0"


class Compiled:
    """``torch.compile`` of a function, one compilation per variant, with a
    permanent eager fallback (and one warning) if compilation fails here.

    A variant is the dtype of the first tensor argument and the values of
    the non-tensor arguments (flags such as ``euclidean``).  Each variant
    compiles a copy of the function with its own code object, so that each
    has its own cache: variants never count against each other's recompile
    limit (8 per code object), past which dynamo would silently run eagerly.
    """

    def __init__(self, fn):
        self.fn, self.variants, self.failed = fn, {}, False

    def _variant(self, args):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor))
        key = (dtype, *(a for a in args if not isinstance(a, torch.Tensor) and a is not None))
        compiled = self.variants.get(key)
        if compiled is None:
            code = self.fn.__code__.replace()  # a copy: a cache of its own
            copy = types.FunctionType(code, self.fn.__globals__, self.fn.__name__, self.fn.__defaults__,
                                      self.fn.__closure__)
            compiled = self.variants[key] = torch.compile(copy, dynamic=True)
        return compiled

    def __call__(self, *args):
        if self.failed or not compile_enabled():
            return self.fn(*args)
        try:
            return self._variant(args)(*args)
        except Exception as error:  # no C++ compiler, an unsupported platform, ...
            self.failed = True
            first_line = str(error).splitlines()[0] if str(error) else ""
            warnings.warn(f"snnl: torch.compile of {self.fn.__name__} failed ({type(error).__name__}: {first_line}); "
                          "running it eagerly", stacklevel=3)
            return self.fn(*args)
