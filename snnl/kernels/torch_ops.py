"""What one loss call asks of the GPU around the pair kernels, counted.

Runs ``soft_nearest_neighbor_loss(z, y, T, backend="triton")`` and its
backward on CPU tensors under the Triton interpreter and records, in call
order, every operation that would reach a GPU:

- ``torch``: aten operations that launch a kernel (views, shape queries and
  allocations do not; a host-to-device copy of a Python number counts as a
  synchronisation, below);
- ``compiled``: calls of a ``torch.compile``'d helper (``snnl.loss.compiled``),
  counted once each (their insides are not: Inductor fuses them);
- ``triton``: Triton launches;
- ``sync``: operations that make the host wait for the GPU (``item``/
  ``bool``/``float`` of a tensor, ``nonzero``, ``unique``, ``bincount``, a
  scalar copied to the device).

The performance model (``snnl.kernels.model``) prices these counts.  Under
``SNNL_COMPILE=0`` (how this module runs) the backward pass of a compiled
helper shows as its eager operations: they are counted as ``torch``, which
overstates them.

    python -m snnl.kernels.torch_ops --batch 256 --dim 128   # prints JSON

Needs ``TRITON_INTERPRET=1`` before Triton is imported; ``count_in_subprocess``
arranges it from any process.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys

# aten operations that launch no kernel on a GPU
NO_KERNEL = {
    "view", "_unsafe_view", "t", "transpose", "expand", "as_strided", "slice", "select", "unsqueeze", "squeeze",
    "alias", "detach", "reshape", "permute", "empty", "empty_like", "empty_strided", "split", "unbind", "size",
    "sym_size", "is_same_size", "_to_copy_noop",
}
# aten operations that make the host wait for the device
SYNCHRONISING = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "bincount",
                 "masked_select", "lift_fresh"}


def count(batch: int, dim: int, distance: str = "cosine", dtype: str = "float32", learned_temperature: bool = False,
          seed: int = 0) -> dict:
    """Counts of one forward + backward (see the module docstring), per phase."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("snnl.kernels.torch_ops.count needs TRITON_INTERPRET=1 set before Triton is imported "
                           "(use count_in_subprocess)")
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from .. import soft_nearest_neighbor_loss
    from ..loss import compiled
    from . import soft_nearest_neighbor

    log: list[tuple[str, str]] = []
    depth = [0]

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if depth[0] == 0:
                name = func.overloadpacket.__name__
                kind = "sync" if name in SYNCHRONISING else None if name in NO_KERNEL else "torch"
                if kind:
                    log.append((kind, name))
            return func(*args, **(kwargs or {}))

    def inside(kind, name_of, original):
        def wrapper(self, *args, **kwargs):
            log.append((kind, name_of(self)))
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapper

    originals = (compiled.Compiled.__call__, soft_nearest_neighbor.Launch.run)
    compiled.Compiled.__call__ = inside("compiled", lambda c: c.fn.__name__, originals[0])
    soft_nearest_neighbor.Launch.run = inside("triton", lambda launch: launch.kernel.fn.__name__, originals[1])
    try:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(batch, dim, generator=generator, dtype=getattr(torch, dtype)).requires_grad_(True)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        temperature = torch.tensor(0.5, requires_grad=True) if learned_temperature else 0.5
        with Recorder():
            loss = soft_nearest_neighbor_loss(z, labels, temperature, distance=distance, backend="triton")
            forward = len(log)
            loss.backward()
    finally:
        compiled.Compiled.__call__, soft_nearest_neighbor.Launch.run = originals
    phases = {"forward": log[:forward], "backward": log[forward:]}
    out = {"problem": {"batch": batch, "dim": dim, "distance": distance, "dtype": dtype,
                       "learned_temperature": learned_temperature}}
    for phase, entries in phases.items():
        counts = collections.Counter(kind for kind, _ in entries)
        out[phase] = {"counts": {k: counts.get(k, 0) for k in ("torch", "compiled", "triton", "sync")},
                      "operations": [f"{kind}:{name}" for kind, name in entries]}
    out["total"] = {k: out["forward"]["counts"][k] + out["backward"]["counts"][k]
                    for k in ("torch", "compiled", "triton", "sync")}
    return out


def count_in_subprocess(batch: int, dim: int, distance: str = "cosine", dtype: str = "float32",
                        learned_temperature: bool = False) -> dict:
    """``count`` in a child process under the interpreter (the caller may have
    imported Triton without it, as the compiled-code lab does)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "SNNL_COMPILE": "0"}
    command = [sys.executable, "-m", "snnl.kernels.torch_ops", "--batch", str(batch), "--dim", str(dim),
               "--distance", distance, "--dtype", dtype] + (["--learned-temperature"] if learned_temperature else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"counting the torch operations failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snnl.kernels.torch_ops", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16"], default="float32")
    parser.add_argument("--learned-temperature", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("SNNL_COMPILE", "0")
    print(json.dumps(count(args.batch, args.dim, args.distance, args.dtype, args.learned_temperature)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
