"""Every choice of the compiled code, named: ``TileConfig`` (tiles, warps,
stages), ``candidate_configs`` (what autotuning tries, per shape bucket),
``feature_block`` (the feature chunk), ``key_parts`` (the parts of the key
range, one program each), ``tuned_config`` (autotuning) and ``Launch`` (one
kernel launch with its configuration: what ``snnl.kernel_tools.lab``
compiles and inspects).  The precisions are ``snnl.choices.PRECISIONS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

# programs wanted per launch: an H100 has 132 streaming multiprocessors
TARGET_PROGRAMS = 132


@dataclass(frozen=True)
class TileConfig:
    """Tile shape and launch options of one kernel configuration."""

    block_m: int
    block_n: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 2
    # ptxas' register budget per thread.  Without it, Triton 3.9's ptxas for
    # sm_80 gives these kernels 32 registers and spills tens of KB per thread.
    maxnreg: int | None = 255


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def feature_block(dim: int, dtype: torch.dtype) -> int:
    """The feature chunk: the whole dimension, padded to a power of two (tl.dot
    wants every side >= 16), up to 128 (64 for fp64, whose tiles take twice
    the shared memory); larger dimensions are looped over in 64-wide chunks,
    which leave registers for the chunked path's accumulators (128-wide
    chunks spill there: tests/test_compiled_code.py)."""
    whole = max(16, triton.next_power_of_2(dim))
    return whole if whole <= (64 if dtype == torch.float64 else 128) else 64


def candidate_configs(
    kind: str, n: int, dim: int, dtype: torch.dtype, capability: int = 90, euclidean: bool = False
) -> list[TileConfig]:
    """What autotuning tries for a launch (``kind``: "forward" or "backward") on
    a GPU of compute ``capability`` (80: A100, 90: H100), per bucket of
    (b, d); the first is the one used without a GPU to time them (the
    interpreter).  Each was chosen from the compiled code of every
    configuration tried (``snnl.kernel_tools.lab``; tests/test_compiled_code.py
    keeps it so): none spills in fp32 or bf16, all fit in shared memory, and
    no warp computes another's exponentials (a tile of at least 16 x 8 pairs
    per warp: smaller tiles make Triton replicate the elementwise work).

    - 32 x 64 tiles with 8 warps compile clean everywhere; the backward pass
      (three products per pair) and the chunked path (d > 128) keep to them
      and to the other clean shape of each.
    - on sm_90, 64- and 128-row forward tiles use warpgroup MMAs and read
      each key tile from L2 for more rows (large batches); so does a 64 x 16
      backward tile with one warpgroup for the cosine distance (the Euclidean
      backward's extra per-row terms make it spill 40 B).
    - fp64 gets small tiles and two stages so that its tiles fit in shared
      memory at every size (the A100 allows 163 KiB per block).
    """
    block_d = feature_block(dim, dtype)
    if dtype == torch.float64:
        return [TileConfig(32, 32, block_d, 4, 2)]
    if dim > block_d:  # the features looped over in chunks
        return [TileConfig(32, 64, block_d, 8, 1)] + ([TileConfig(64, 32, block_d, 8, 1)] if capability >= 90 else [])
    if kind == "backward":
        warpgroup = [TileConfig(64, 16, block_d, 4, 1)] if capability >= 90 and not euclidean else []
        return warpgroup + [TileConfig(32, 64, block_d, 8, 1), TileConfig(32, 32, block_d, 4, 2)]
    if capability >= 90:
        large = [TileConfig(128, 64, block_d, 8, 1), TileConfig(128, 32, block_d, 8, 1)] if n > 4096 else []
        return large + [TileConfig(64, 32, block_d, 8, 1), TileConfig(32, 64, block_d, 8, 1)]
    # (64 x 32 with 4 warps spills 4 B on sm_80, where the per-row terms and
    # int64 labels take the last registers: tests/test_compiled_code.py)
    return [TileConfig(32, 64, block_d, 8, 1), TileConfig(64, 16, block_d, 4, 2)]


def far_pass_config(dim: int, dtype: torch.dtype) -> TileConfig:
    """The tiles of the backward far pass (``FAR_PASS``: up to four exp2 and
    four per-row vectors per pair, in batches with far rows only): 16 x 32
    with 4 warps compiles without spills for fp32 and bf16 on sm_80 and
    sm_90, where the pair kernels' 32-row tiles spill (tests/test_compiled_code.py)."""
    if dtype == torch.float64:
        return candidate_configs("backward", 0, dim, dtype)[0]
    return TileConfig(16, 32, feature_block(dim, dtype), 4, 1)


def device_capability(device: torch.device) -> int:
    """The GPU's compute capability as 80, 90, ... (90 for CPU tensors under the interpreter)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def shape_bucket(n: int, dim: int) -> tuple[int, int]:
    """Autotuning key: batch and feature sizes rounded up to powers of two."""
    return triton.next_power_of_2(n), triton.next_power_of_2(dim)


def key_parts(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Parts of the key range: at least enough programs to fill the GPU
    (TARGET_PROGRAMS) where there are key tiles to share out, each part a
    whole number of key tiles."""
    return triton.cdiv(n_cols, keys_per_part(n_rows, n_cols, config))


def keys_per_part(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Keys per part of the key range (a multiple of BLOCK_N)."""
    wanted = triton.cdiv(TARGET_PROGRAMS, triton.cdiv(n_rows, config.block_m))
    key_tiles = triton.cdiv(n_cols, config.block_n)
    return max(1, key_tiles // wanted) * config.block_n


@dataclass
class Launch:
    """One kernel launch, its arguments by name (runtime ``args`` and
    compile-time ``constexprs``): what the Triton backend runs and
    ``snnl.kernel_tools.lab`` compiles and inspects."""

    kernel: object
    grid: tuple[int, ...]
    args: dict
    constexprs: dict
    config: TileConfig

    def described_constexprs(self) -> dict:
        """The compile-time choices as plain values, records flattened
        (``layout.Math``'s and ``layout.Terms``' fields by name), dtypes by name."""
        flat: dict = {}
        for name, value in self.constexprs.items():
            items = value._asdict().items() if hasattr(value, "_asdict") else [(name, value)]
            flat.update({key: str(v) if not isinstance(v, (bool, int, float, str)) else v for key, v in items})
        return flat

    def options(self) -> dict:
        """Compile options of the configuration (as triton.jit launch keywords)."""
        # fused multiply-adds asked for explicitly: Triton 3.10 turns its default off,
        # and the accuracy and instruction counts of the kernels are stated with them
        options = {"num_warps": self.config.num_warps, "num_stages": self.config.num_stages, "enable_fp_fusion": True}
        if self.config.maxnreg is not None and not interpreted():
            options["maxnreg"] = self.config.maxnreg
        return options

    def run(self):
        self.kernel[self.grid](**self.args, **self.constexprs, **self.options())


_TUNED: dict = {}


def tuned_config(
    kind: str, n: int, dim: int, dtype: torch.dtype, precision: str, euclidean: bool, make_launch, device: torch.device
) -> TileConfig:
    """The fastest candidate configuration for a shape bucket, timed once per
    bucket on the GPU (``make_launch(config)`` builds a launch); the first
    candidate, pinned, under the interpreter."""
    capability = device_capability(device)
    candidates = candidate_configs(kind, n, dim, dtype, capability, euclidean)
    if interpreted() or len(candidates) == 1:
        return candidates[0]
    key = (kind, *shape_bucket(n, dim), dtype, precision, euclidean, capability)
    if key not in _TUNED:
        timings = []
        for config in candidates:
            launch = make_launch(config)
            try:
                timings.append((triton.testing.do_bench(launch.run, warmup=5, rep=20), config))
            except triton.runtime.errors.OutOfResources:
                continue
        _TUNED[key] = min(timings, key=lambda t: t[0])[1] if timings else candidates[0]
    return _TUNED[key]


def model_programs(n_rows: int, n_cols: int, config: TileConfig) -> int:
    """Programs of a tile launch (row tiles x key-range parts), for reports."""
    return triton.cdiv(n_rows, config.block_m) * key_parts(n_rows, n_cols, config)
