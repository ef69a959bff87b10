"""What one loss call asks of the GPU around the pair kernels, counted.

Runs ``soft_nearest_neighbor_loss(z, y, T, backend="triton")`` and its
backward on CPU tensors under the Triton interpreter and records, in call
order, every operation that would reach a GPU:

- ``torch``: aten operations that launch a kernel (views, shape queries and
  allocations do not), in the public function and inside the loss's
  operators;
- ``operator``: calls of the loss's torch.library operators (``snnl::*``),
  counted once each besides what they launch;
- ``triton``: Triton launches;
- ``sync``: operations that make the host wait for the GPU (``item``/
  ``bool``/``float`` of a tensor, ``nonzero``, ``unique``, ``bincount``, a
  scalar copied to the device).

The performance model (``snnl.kernel_tools.model``) prices these counts.

    python -m snnl.kernel_tools.op_counts --batch 256 --dim 128   # prints JSON

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
from typing import Any

KINDS = ("torch", "operator", "triton", "sync")
# aten operations that launch no kernel on a GPU
NO_KERNEL = {
    "view",
    "_unsafe_view",
    "t",
    "transpose",
    "expand",
    "as_strided",
    "slice",
    "select",
    "unsqueeze",
    "squeeze",
    "alias",
    "detach",
    "reshape",
    "permute",
    "empty",
    "empty_like",
    "empty_strided",
    "split",
    "unbind",
    "size",
    "sym_size",
    "is_same_size",
    "_to_copy_noop",
    "new_empty",
    # a Python number as a 0-dim operand: a wrapped host scalar, no kernel
    "scalar_tensor",
}
# aten operations that make the host wait for the device
SYNCHRONISING = {
    "_local_scalar_dense",
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "masked_select",
    "lift_fresh",
}


def count(
    batch: int,
    dim: int,
    distance: str = "cosine",
    dtype: str = "float32",
    learned_temperature: bool = False,
    check_values: bool = True,
    seed: int = 0,
) -> dict:
    """Counts of one forward + backward (see the module docstring), per phase."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "snnl.kernel_tools.op_counts.count needs TRITON_INTERPRET=1 set before Triton is "
            "imported (use count_in_subprocess)"
        )
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from .. import soft_nearest_neighbor_loss
    from ..kernels import configs
    from ..loss.backends import triton as fused

    log: list[tuple[str, str]] = []
    depth = [0]  # inside a Triton launch: the interpreter's own torch calls are not the GPU's

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if depth[0]:
                return func(*args, **kwargs)
            name = func.overloadpacket.__name__
            if func.namespace == "snnl":
                log.append(("operator", name))
                return func(*args, **kwargs)  # what it runs is recorded by ``inside`` below
            kind = "sync" if name in SYNCHRONISING else None if name in NO_KERNEL else "torch"
            if kind:
                log.append((kind, name))
            return func(*args, **kwargs)

    original = configs.Launch.run

    def run(launch):
        log.append(("triton", launch.kernel.fn.__name__))
        depth[0] += 1
        try:
            return original(launch)
        finally:
            depth[0] -= 1

    def inside(fn):
        """The operators' implementations run with the dispatch mode off: record them too."""

        def recorded(*args, **kwargs):
            with Recorder():
                return fn(*args, **kwargs)

        return recorded

    implementation = (fused.forward, fused.backward)
    configs.Launch.run = run  # type: ignore[method-assign]  # recorded for this count only
    fused.forward, fused.backward = (inside(fn) for fn in implementation)
    try:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(batch, dim, generator=generator, dtype=getattr(torch, dtype)).requires_grad_(True)
        labels = torch.randint(0, 10, (batch,), generator=generator)
        temperature = torch.tensor(0.5, requires_grad=True) if learned_temperature else 0.5
        with Recorder():
            loss = soft_nearest_neighbor_loss(
                z, labels, temperature, distance=distance, backend="triton", check_values=check_values
            )
            forward = len(log)
            loss.backward()
    finally:
        configs.Launch.run = original  # type: ignore[method-assign]
        fused.forward, fused.backward = implementation
    phases = {"forward": log[:forward], "backward": log[forward:]}
    out: dict[str, Any] = {
        "problem": {
            "batch": batch,
            "dim": dim,
            "distance": distance,
            "dtype": dtype,
            "learned_temperature": learned_temperature,
            "check_values": check_values,
        }
    }
    for phase, entries in phases.items():
        counts = collections.Counter(kind for kind, _ in entries)
        out[phase] = {
            "counts": {k: counts.get(k, 0) for k in KINDS},
            "operations": [f"{kind}:{name}" for kind, name in entries],
        }
    out["total"] = {k: out["forward"]["counts"][k] + out["backward"]["counts"][k] for k in KINDS}
    return out


def count_in_subprocess(
    batch: int,
    dim: int,
    distance: str = "cosine",
    dtype: str = "float32",
    learned_temperature: bool = False,
    check_values: bool = True,
) -> dict:
    """``count`` in a child process under the interpreter (the caller may have
    imported Triton without it, as the compiled-code lab does)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [
        sys.executable,
        "-m",
        "snnl.kernel_tools.op_counts",
        "--batch",
        str(batch),
        "--dim",
        str(dim),
        "--distance",
        distance,
        "--dtype",
        dtype,
    ] + (["--learned-temperature"] if learned_temperature else [])
    command += [] if check_values else ["--no-check-values"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"counting the torch operations failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snnl.kernel_tools.op_counts", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16"], default="float32")
    parser.add_argument("--learned-temperature", action="store_true")
    parser.add_argument("--no-check-values", action="store_true", help="count a call with check_values=False")
    args = parser.parse_args(argv)
    print(
        json.dumps(
            count(args.batch, args.dim, args.distance, args.dtype, args.learned_temperature, not args.no_check_values)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
