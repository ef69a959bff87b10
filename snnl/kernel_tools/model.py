"""An analytic performance model of the loss on NVIDIA GPUs, built on the
compiled code (``snnl.kernel_tools.lab``).  A MODEL, NOT A MEASUREMENT: no GPU has
run these kernels; every constant is stated below and every count comes from
the SASS and the launch geometry.

Per launch, with P programs of W warps, T trips of the main loop each and the
loop's SASS instruction counts (per thread, i.e. per warp instruction):

- issue:    P W T (loop instructions) / (4 warp instructions per clock per SM x SMs x clock)
- tensor:   the launch's MMA floating-point work / the tensor cores' dense
            rate for the operand type (warpgroup MMA on sm_90; mma.sync, as
            Triton emits for 32-row tiles, assumed at half that rate there)
- exp2:     P W T (loop MUFU.EX2) x 32 lanes / (16 per clock per SM x SMs x clock)
- memory:   key tiles read per trip from L2 (P T x tile bytes) / L2 bandwidth,
            and each operand read once from HBM / HBM bandwidth

and the launch takes the largest of these (perfect overlap: optimistic),
divided by the occupancy of the last wave (P programs on SMs x blocks per SM,
blocks per SM from registers and shared memory), plus a launch overhead.
The row kernels around them (``snnl.kernels.rows``: operands, the parts
added, the gradient of the points; the backward far pass, whose loop has no
trips without far rows) are their bytes at HBM bandwidth plus a launch.  The
torch work left around the kernels is counted, not guessed
(``snnl.kernel_tools.op_counts``: the torch operations and host
synchronisations of one call), each operation a launch overhead, each
synchronisation SYNC_S.

The eager reference and ``torch.compile`` of it, in the same model: their
b x b matrices through HBM and their three b x d x b products on the fp32
units (torch's default: no TF32 for matmul).  The eager byte count is
measured here by the torch profiler on the CPU (every aten operation's
inputs and outputs, at b = 512, scaled by b^2); ``torch.compile`` keeps
COMPILED_BYTES_PER_PAIR bytes per pair, read off Inductor's generated code
for the reference (TORCH_LOGS=output_code, b = 384: the b x b logits written
by the product and read by one fused kernel, a b x b boolean mask saved for
the backward pass, the backward kernel reading both and writing the b x b
gradient that two products read: 4 + 4 + 1 + 4 + 1 + 4 + 4 + 4 bytes, and
a second read of the logits by the forward reductions: 30).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    sms: int
    clock_hz: float  # the clock the tensor-core figures are quoted at
    tf32_flops: float  # dense tensor-core TF32
    bf16_flops: float  # dense tensor-core BF16/FP16
    fp64_flops: float  # FP64 tensor cores (DMMA)
    fp32_flops: float  # CUDA cores (torch's matmul default: no TF32)
    hbm_bytes: float
    l2_bytes: float  # L2 read bandwidth (assumed)
    registers_per_sm: int = 65536
    shared_per_sm: int = 228 * 1024
    issue_per_clock: int = 4  # warp instructions per clock per SM (4 schedulers)
    ex2_per_clock: int = 16  # MUFU.EX2 lanes per clock per SM
    mma_sync_fraction: float = 1.0  # mma.sync's share of the dense tensor-core rate
    launch_s: float = 5e-6  # per kernel launch
    torch_op_s: float = 5e-6  # per small torch operation around the kernels


GPUS = {
    # NVIDIA H100 SXM5 datasheet: 132 SMs, 494.7 TFLOP/s dense TF32, 989 BF16,
    # 66.9 FP64 tensor, 66.9 FP32, 3.35 TB/s HBM3 (tensor figures at 1.83 GHz).
    # L2 bandwidth and mma.sync at half the warpgroup-MMA rate: assumptions.
    "sm_90": Gpu(
        "H100 SXM",
        132,
        1.83e9,
        494.7e12,
        989.4e12,
        66.9e12,
        66.9e12,
        3.35e12,
        5.5e12,
        shared_per_sm=228 * 1024,
        mma_sync_fraction=0.5,
    ),
    # NVIDIA A100 SXM4 80GB datasheet: 108 SMs at 1.41 GHz, 156 TFLOP/s TF32,
    # 312 BF16, 19.5 FP64 tensor, 19.5 FP32, 2.04 TB/s HBM2e.  L2: assumed.
    "sm_80": Gpu(
        "A100 SXM",
        108,
        1.41e9,
        156e12,
        312e12,
        19.5e12,
        19.5e12,
        2.04e12,
        3.8e12,
        shared_per_sm=164 * 1024,
        mma_sync_fraction=1.0,
    ),
}

COMPILED_BYTES_PER_PAIR = 30  # see the module docstring
SYNC_S = 10e-6  # one host synchronisation (assumption)


def _element_size(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}[dtype]


def _products_per_trip(report, dtype: str) -> tuple[float, str]:
    """MMA floating-point work of one loop trip of one program, and its kind."""
    c = report.constexprs
    tile = 2.0 * c["BLOCK_M"] * c["BLOCK_N"] * c["BLOCK_D"]
    split = c.get("THREE_TF32", False)
    logits = tile * (3 if split else 1)
    if report.role == "forward":
        work = logits
    else:
        grad = tile * (3 if split else 2 if c.get("GRAD_THREE_TF32") else 1)
        work = logits + grad
    kind = "fp64" if dtype == "float64" else "bf16" if dtype in ("bfloat16", "float16") else "tf32"
    if dtype == "float32" and c.get("PRECISION") == "ieee" and not split:
        kind = "fp32"
    return work, kind


def _blocks_per_sm(report, gpu: Gpu) -> int:
    threads = 32 * report.config["num_warps"]
    by_registers = gpu.registers_per_sm // max(1, report.registers * threads)
    by_shared = gpu.shared_per_sm // max(1, report.shared)
    return max(1, min(by_registers, by_shared, 32))


def launch_time(report, dtype: str) -> dict:
    """The model's time of one compiled launch, with each term."""
    gpu = GPUS[report.target]
    c, loop = report.constexprs, report.sass_loop
    warps = report.config["num_warps"]
    trips = report.programs * report.iterations
    issue = trips * warps * loop.get("all", 0) / (gpu.issue_per_clock * gpu.sms * gpu.clock_hz)
    work, kind = _products_per_trip(report, dtype)
    rate = {"tf32": gpu.tf32_flops, "bf16": gpu.bf16_flops, "fp64": gpu.fp64_flops, "fp32": gpu.fp32_flops}[kind]
    if kind != "fp32" and not report.sass_loop.get("wgmma", 0):  # mma.sync, not warpgroup MMAs
        rate *= gpu.mma_sync_fraction
    tensor = trips * work / rate
    ex2 = trips * warps * loop.get("ex2", 0) * 32 / (gpu.ex2_per_clock * gpu.sms * gpu.clock_hz)
    size = _element_size(dtype)
    parts = 2 if c.get("THREE_TF32") else 1
    l2 = trips * c["BLOCK_N"] * c["BLOCK_D"] * size * parts / gpu.l2_bytes
    blocks = _blocks_per_sm(report, gpu)
    slots = gpu.sms * blocks
    occupancy = report.programs / (math.ceil(report.programs / slots) * slots)
    terms = {"issue": issue, "tensor": tensor, "exp2": ex2, "l2": l2}
    bound = max(terms, key=lambda term: terms[term])
    seconds = terms[bound] / occupancy + gpu.launch_s
    return {
        "seconds": seconds,
        "bound": bound,
        "occupancy": occupancy,
        "blocks_per_sm": blocks,
        **{f"{k}_s": v for k, v in terms.items()},
    }


ROW_ROLES = ("prepare", "prepare-keys", "finish-forward", "coefficients", "backward-far", "finish-backward")


def row_launch_time(report, batch: int, dim: int, dtype: str, parts: dict) -> dict:
    """The model's time of a row kernel (``snnl.kernels.rows``, and the
    backward far pass, whose loop has no trips without far rows): the bytes it
    moves through HBM plus the launch.  ``parts``: the pair launches' numbers
    of key-range parts (what the finishing kernels add up)."""
    gpu = GPUS[report.target]
    size = _element_size(dtype)
    acc = 8 if dtype == "float64" else 4
    width = -(-dim // report.constexprs.get("BLOCK_D", 16)) * report.constexprs.get("BLOCK_D", 16)
    role = "prepare" if report.role == "prepare-keys" else report.role  # the keys' operands: the same work
    padded = -(-dim // 16) * 16 if role in ("prepare", "finish-backward") else width
    split = 2 if dtype == "float32" else 1
    moved = {
        "prepare": 2 * batch * dim * size + batch * padded * size * split + batch * acc,  # x twice, hi/lo, norms
        "finish-forward": (parts.get("forward", 1) + 1) * 2 * batch * acc,  # the parts in, lse out
        "coefficients": 9 * batch * acc,  # lse_all, lse_same, the upstream gradient in; six per-row values out
        "backward-far": batch * padded * acc + 2 * batch * acc,  # its part, zeros without far rows
        "finish-backward": (
            (parts.get("backward", 1) + 1) * (batch * padded + 2 * batch) * acc * 2  # read twice
            + 2 * batch * dim * size
            + batch * dim * size
            + batch * acc
        ),
    }[role]
    seconds = moved / gpu.hbm_bytes + gpu.launch_s
    return {"seconds": seconds, "bound": "memory", "bytes": moved}


def glue_time(counts: dict, gpu: Gpu) -> float:
    """The rest of a loss call around the kernels, from the operations counted
    by ``snnl.kernel_tools.op_counts`` (one call's forward and backward): each
    torch operation a launch; each host synchronisation SYNC_S (the host
    waits, then the GPU waits for its next launch)."""
    total = counts["total"]
    return total["torch"] * gpu.torch_op_s + total["sync"] * SYNC_S


_EAGER_BYTES_PER_PAIR: dict = {}


def eager_bytes_per_pair(batch: int = 512, dim: int = 128) -> float:
    """Bytes the eager reference moves per pair, forward + backward, measured by
    the torch profiler on the CPU: the inputs and outputs of every aten
    operation on b x b tensors (b^2 elements or more), over b^2."""
    key = (batch, dim)
    if key not in _EAGER_BYTES_PER_PAIR:
        import torch
        from torch.profiler import ProfilerActivity, profile

        from ..loss import soft_nearest_neighbor_loss
        from .stderr import PROFILER, without_lines

        z = torch.randn(batch, dim, requires_grad=True)
        y = torch.randint(0, 10, (batch,))
        t = torch.tensor(0.5)
        with without_lines(*PROFILER), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            soft_nearest_neighbor_loss(z, y, t, backend="reference").backward()
        total = 0
        for event in prof.events():
            if not event.name.startswith("aten::") or event.name in (
                "aten::mm",
                "aten::empty",
                "aten::empty_like",
                "aten::empty_strided",
                "aten::view",
                "aten::t",
                "aten::transpose",
                "aten::expand",
                "aten::as_strided",
                "aten::reshape",
                "aten::unsqueeze",
                "aten::select",
                "aten::slice",
                "aten::to",
                "aten::_to_copy",
            ):
                continue
            if any(sub.name.startswith("aten::") for sub in event.cpu_children):
                continue  # count the innermost operations only
            for shape, kind in zip(event.input_shapes or [], event.input_dtypes or []):
                elements = math.prod(shape) if shape else 0
                if elements >= batch * batch:
                    total += elements * {"bool": 1, "double": 8, "long int": 8}.get(kind, 4)
            # outputs are not recorded: every b x b op writes one b x b result
            if any(math.prod(s) >= batch * batch for s in (event.input_shapes or []) if s):
                total += batch * batch * 4
        _EAGER_BYTES_PER_PAIR[key] = total / (batch * batch)
    return _EAGER_BYTES_PER_PAIR[key]


def baseline_times(batch: int, dim: int, gpu: Gpu) -> dict:
    """The eager reference and torch.compile of it, forward + backward (fp32)."""
    products = 3 * 2.0 * batch * batch * dim / gpu.fp32_flops  # logits, and the two gradient products
    pairs = float(batch) * batch
    eager = pairs * eager_bytes_per_pair() / gpu.hbm_bytes + products + 60 * gpu.torch_op_s
    compiled = pairs * COMPILED_BYTES_PER_PAIR / gpu.hbm_bytes + products + 10 * gpu.torch_op_s
    return {
        "eager_s": eager,
        "compiled_s": compiled,
        "eager_bytes_per_pair": eager_bytes_per_pair(),
        "compiled_bytes_per_pair": COMPILED_BYTES_PER_PAIR,
    }


def estimate_problem(
    reports, batch: int, dim: int, dtype: str, counts: dict | None = None, distance: str = "cosine"
) -> list[dict]:
    """Per target: the fastest configuration of each pair launch in the model
    (what autotuning would pick were the model right), the row kernels, the
    torch work counted around them (``counts`` from
    ``snnl.kernel_tools.op_counts``; counted here when not given), and the
    baselines."""
    if counts is None:
        from .op_counts import count_in_subprocess

        # the same operations at any size (tests/test_compiled_code.py); bf16
        # counted as fp16, which the interpreter computes correctly
        counts = count_in_subprocess(
            min(batch, 256), min(dim, 128), distance, "float16" if dtype == "bfloat16" else dtype
        )
    out = []
    for target in sorted({r.target for r in reports}):
        gpu = GPUS[target]
        chosen: dict = {}
        for report in (r for r in reports if r.target == target and not r.error and r.role not in ROW_ROLES):
            timing = launch_time(report, dtype)
            if report.role not in chosen or timing["seconds"] < chosen[report.role][1]["seconds"]:
                chosen[report.role] = (report, timing)
        parts = {role: r.grid[1] if len(r.grid) > 1 else 1 for role, (r, _) in chosen.items()}
        for report in (r for r in reports if r.target == target and not r.error and r.role in ROW_ROLES):
            chosen[report.role] = (report, row_launch_time(report, batch, dim, dtype, parts))
        glue = glue_time(counts, gpu)
        kernels = sum(t["seconds"] for _, t in chosen.values())
        entry = {
            "target": target,
            "gpu": asdict(gpu),
            "batch": batch,
            "dim": dim,
            "dtype": dtype,
            "launches": {role: {"config": r.config, "programs": r.programs, **t} for role, (r, t) in chosen.items()},
            "torch_ops_counted": counts["total"],
            "glue_s": glue,
            "kernels_s": kernels,
            "total_s": kernels + glue,
            "label": "model estimate, not a measurement",
        }
        if dtype == "float32":
            entry.update(baseline_times(batch, dim, gpu))
            entry["x_eager"] = entry["eager_s"] / entry["total_s"]
            entry["x_compiled"] = entry["compiled_s"] / entry["total_s"]
        out.append(entry)
    return out


def format_estimates(estimates: list[dict]) -> str:
    lines = ["MODEL ESTIMATES (not measurements):"]
    for e in estimates:
        launches = ", ".join(
            f"{role} {t['seconds'] * 1e3:.3f} ms ({t['bound']}-bound, "
            f"{t['config']['block_m']}x{t['config']['block_n']})"
            for role, t in e["launches"].items()
        )
        line = (
            f"  {e['gpu']['name']}: total {e['total_s'] * 1e3:.3f} ms = {launches} + torch {e['glue_s'] * 1e3:.3f} ms"
        )
        if "eager_s" in e:
            line += (
                f"; eager reference {e['eager_s'] * 1e3:.2f} ms ({e['x_eager']:.1f}x), torch.compile "
                f"{e['compiled_s'] * 1e3:.2f} ms ({e['x_compiled']:.1f}x)"
            )
        lines.append(line)
    return "\n".join(lines)
