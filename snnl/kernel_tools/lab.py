"""The compiled-code lab: every launch the loss makes, compiled for real
NVIDIA targets on a machine without a GPU, and what the code says.

    python -m snnl.kernel_tools.lab --batch 8192 --dim 128            # or: snnl kernels ...
    python -m snnl.kernel_tools.lab --batch 8192 --dim 128 --json out.json

For a problem (b, d, dtype, distance, precision) and targets (sm_80, sm_90 by
default) it builds the launches the loss makes (forward and backward, every
configuration autotuning may pick, the queries-vs-keys launches of
torch.distributed with ``--distributed``), binds their arguments with
Triton's own binder (so the specialisation is the real one), compiles them
with ``triton.compile`` for the target and reports, per launch: registers,
spill stores and loads (ptxas), shared memory, the grid and its number of
programs, and the SASS instruction mix, in the whole kernel and in its main
loop (tensor-core MMAs, FFMA, MUFU.EX2, local-memory traffic).  The analytic
performance model built on these counts is ``snnl.kernel_tools.model``.

Nothing here runs a kernel: it needs no GPU and no driver, only Triton's
bundled ptxas and cuobjdump.  Run it in a process without TRITON_INTERPRET
(under the interpreter Triton makes no compilable kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field

from .options import TARGETS, add_arguments
from .stderr import NVDISASM_FORMAT, without_lines

SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # bytes per block (A100, H100)

# SASS opcode prefixes of interest: tensor-core MMAs (HMMA: mma.sync on sm_80+,
# HGMMA: warpgroup MMA on sm_90, DMMA: fp64 MMA), fp32 FMAs, the
# special-function exp2, local memory (spills) and all instructions.
SASS_CLASSES = {
    "mma": ("HMMA", "HGMMA", "DMMA", "IMMA"),
    "wgmma": ("HGMMA",),
    "ffma": ("FFMA",),
    "dfma": ("DFMA",),
    "ex2": ("MUFU.EX2",),
    "local": ("LDL", "STL"),
}


_COMPILED: dict = {}  # compile key -> the report that read its code


@dataclass
class LaunchReport:
    role: str  # forward, backward (square), backward-queries / backward-keys (distributed)
    target: str
    config: dict
    constexprs: dict
    grid: list
    programs: int
    iterations: int  # trips of the main loop per program
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared: int = 0
    shared_limit: int = 0
    sass_total: dict = field(default_factory=dict)
    sass_loop: dict = field(default_factory=dict)  # per trip of the main loop
    error: str | None = None


def _lines(sass: str) -> list[tuple[str, str]]:
    """(kind, text) per line of Triton's SASS listing: ("label", name) or
    ("instruction", text without the control codes and the semicolon)."""
    out = []
    for line in sass.splitlines():
        line = line.strip()
        if re.fullmatch(r"[.\w]+:", line):
            out.append(("label", line[:-1]))
        elif "\t" in line:
            out.append(("instruction", line.split("\t", 1)[1].rstrip(";").strip()))
    return out


def _opcode(text: str) -> str:
    words = text.split()
    return words[1] if words[0].startswith("@") and len(words) > 1 else words[0]


def classify(instructions) -> dict:
    counts = {name: 0 for name in SASS_CLASSES}
    for text in instructions:
        opcode = _opcode(text)
        for name, prefixes in SASS_CLASSES.items():
            if opcode.startswith(prefixes):
                counts[name] += 1
    counts["all"] = len(instructions)
    return counts


def instructions(sass: str) -> list[str]:
    return [text for kind, text in _lines(sass) if kind == "instruction"]


def main_loop(sass: str) -> list[str]:
    """The instructions of the main loop: of the backward branches (a branch to
    a label above it), the one whose body holds the most tensor-core or FMA
    work (the loop over key tiles; with the feature dimension in chunks, the
    loop nest around it)."""
    lines = _lines(sass)
    where = {text: i for i, (kind, text) in enumerate(lines) if kind == "label"}
    best: list = []
    best_work = -1
    for i, (kind, text) in enumerate(lines):
        if kind != "instruction" or _opcode(text) != "BRA":
            continue
        target = text.split()[-1]
        start = where.get(target)
        if start is None or start > i:
            continue
        body = [t for k, t in lines[start : i + 1] if k == "instruction"]
        counts = classify(body)
        work = counts["mma"] + counts["ffma"] + counts["dfma"]
        if work > best_work or (work == best_work and len(body) > len(best)):
            best, best_work = body, work
    return best


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def loss_launches(
    batch: int,
    dim: int,
    dtype: str = "float32",
    distance: str = "cosine",
    precision: str = "tf32x3",
    distributed: bool = False,
    capability: int = 90,
) -> list[tuple[str, object]]:
    """The launches the loss makes for this problem, for every candidate
    configuration of the pair kernels: (role, Launch), from the Triton
    backend's own plans (``snnl.loss.backends.triton.forward_plan`` and
    ``backward_plan``), so that what is compiled here is what the loss runs.
    Tensors are allocated (never touched: ``torch.empty``) on the CPU with
    the real shapes, so binding sees the real sizes, strides and alignments.
    ``distributed``: a process's rows (a quarter of the batch) against the
    gathered batch."""
    import torch

    from ..kernels import configs
    from ..loss.backends import triton as fused
    from ..loss.options import Inputs, LossOptions, Upstream

    torch_dtype = _torch_dtype(dtype)
    acc = torch.float64 if torch_dtype == torch.float64 else torch.float32
    x = torch.empty(batch, dim, dtype=torch_dtype)
    labels = torch.empty(batch, dtype=torch.int64)
    temperature = torch.empty((), dtype=acc)
    if distributed:
        inputs = Inputs(x[: batch // 4], x, labels[: batch // 4], labels, temperature)
        options = LossOptions(self_offset=0, distance=distance, eps=1e-5, precision=precision)
    else:
        inputs = Inputs(x, None, labels, None, temperature)
        options = LossOptions(self_offset=0, distance=distance, eps=1e-5, precision=precision)
    n = inputs.queries.shape[0]
    upstream = Upstream(torch.empty(n, dtype=acc), None, None)
    seen: set = set()
    launches: list[tuple[str, object]] = []

    def take(plan):
        # each distinct launch once: the pair launches of every candidate, the others
        # (the same in every plan) once, each side's far pass included
        for role, launch in plan.launches:
            key = (role, repr(sorted(launch.described_constexprs().items())))
            if key not in seen:
                launches.append((role, launch))
                seen.add(key)

    euclidean = distance == "euclidean"
    for config in configs.candidate_configs("forward", batch, dim, torch_dtype, capability, euclidean):
        take(fused.forward_plan(inputs, options, config)[0])
    for config in configs.candidate_configs("backward", batch, dim, torch_dtype, capability, euclidean):
        forward, kept = fused.forward_plan(inputs, options, config)
        stats = forward.outputs["statistics"]
        take(fused.backward_plan(upstream, stats.lse_all, stats.lse_same, kept, inputs, options, True, config))
    return launches


# the pair kernels' launches (the last, the far pass, has one configuration of its own)
PAIR_ROLES = ("forward", "backward", "backward-queries", "backward-keys", "backward-far")


def _iterations(role: str, launch) -> int:
    """Trips of the loop over key tiles per program (times the feature chunks
    when the feature dimension is looped over); 1 for the row kernels, whose
    loops are over feature chunks and parts (and, in the rare tiles with far
    rows, ``finish_forward``'s exact pass)."""
    if role not in PAIR_ROLES or role == "backward-far":  # the far pass: no trips without far rows
        return 1
    constexprs = launch.described_constexprs()
    part = launch.args.get("keys_per_part", launch.args.get("cols_per_part"))  # keys per part of the key range
    width = launch.args["Q" if "Q" in launch.args else "R"].width  # the operands' (padded) features
    trips = -(-part // constexprs["BLOCK_N"])
    if not constexprs["WHOLE_D"]:
        trips *= -(-width // constexprs["BLOCK_D"])
    return trips


def compile_launch(role: str, launch, target: str) -> LaunchReport:
    """Compile one launch for ``target`` and read its code."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    config = launch.config
    programs = 1
    for g in launch.grid:
        programs *= g
    report = LaunchReport(
        role,
        target,
        asdict(config),
        launch.described_constexprs(),
        list(launch.grid),
        programs,
        _iterations(role, launch),
        shared_limit=SHARED_LIMIT[target],
    )
    gpu = GPUTarget("cuda", TARGETS[target], 32)
    backend = make_backend(gpu)
    kwargs = {**launch.constexprs, **launch.options()}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    key = (
        target,
        fn.__name__,
        repr(signature),
        repr(sorted(constexprs.items(), key=str)),
        repr(attrs),
        repr(sorted(options.__dict__.items())),
    )
    if key in _COMPILED:  # the same code (launches differ only in sizes): read it once
        cached = _COMPILED[key]
        for name in ("registers", "spill_stores", "spill_loads", "shared", "sass_total", "sass_loop", "error"):
            setattr(report, name, getattr(cached, name))
        return report
    _COMPILED[key] = report
    log = io.StringIO()
    knobs = (triton.knobs.nvidia.dump_ptxas_log, triton.knobs.compilation.always_compile)
    # always compile: a kernel from Triton's cache comes without ptxas' report
    triton.knobs.nvidia.dump_ptxas_log = triton.knobs.compilation.always_compile = True
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=gpu, options=options.__dict__)
    except Exception as error:  # a configuration the target cannot compile (e.g. out of shared memory)
        report.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return report
    finally:
        triton.knobs.nvidia.dump_ptxas_log, triton.knobs.compilation.always_compile = knobs
    text = log.getvalue()
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    report.registers = int(registers.group(1)) if registers else 0
    report.spill_stores, report.spill_loads = (int(spills.group(1)), int(spills.group(2))) if spills else (0, 0)
    report.shared = int(compiled.metadata.shared)
    with without_lines(NVDISASM_FORMAT):
        sass = compiled.asm["sass"]
    report.sass_total = classify(instructions(sass))
    report.sass_loop = classify(main_loop(sass))
    return report


def inspect_problem(
    batch: int,
    dim: int,
    dtype: str = "float32",
    distance: str = "cosine",
    precision: str = "tf32x3",
    targets=tuple(TARGETS),
    distributed: bool = False,
) -> list[LaunchReport]:
    """Compile every launch of a problem for every target."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError(
            "the compiled-code lab needs a process without TRITON_INTERPRET=1 (the interpreter "
            "makes no compilable kernels)"
        )
    return [
        compile_launch(role, launch, target)
        for target in targets
        for role, launch in loss_launches(batch, dim, dtype, distance, precision, distributed, TARGETS[target])
    ]


def format_reports(reports: list[LaunchReport]) -> str:
    header = (
        f"{'target':<6} {'launch':<17} {'tile (m,n,d) w/s':<20} {'programs':>8} {'trips':>6} {'regs':>4} "
        f"{'spill':>6} {'shared':>8} {'loop: mma':>9} {'ffma':>5} {'ex2':>4} {'local':>5} {'all':>5}"
    )
    lines = [header]
    for r in reports:
        c = r.config
        tile = f"{c['block_m']},{c['block_n']},{c['block_d']} {c['num_warps']}/{c['num_stages']}"
        if r.error:
            lines.append(f"{r.target:<6} {r.role:<17} {tile:<20} error: {r.error}")
            continue
        loop = r.sass_loop
        lines.append(
            f"{r.target:<6} {r.role:<17} {tile:<20} {r.programs:>8} {r.iterations:>6} {r.registers:>4} "
            f"{r.spill_stores:>6} {r.shared:>8} {loop.get('mma', 0):>9} {loop.get('ffma', 0):>5} "
            f"{loop.get('ex2', 0):>4} {loop.get('local', 0):>5} {loop.get('all', 0):>5}"
        )
    return "\n".join(lines)


LEGEND = """\
tile: rows (m) x keys (n) x feature chunk (d) of one program, w/s: warps and pipeline stages;
programs: the launch's grid; trips: iterations of its main loop; regs: registers per thread;
spill: bytes spilled to local memory; shared: bytes of shared memory per program;
loop: instructions per trip of the main loop (mma: tensor-core MMAs, ffma: fp32 fused
multiply-adds, ex2: exp2 on the special-function unit, local: local-memory loads and stores,
all: every instruction).  Compiled without a GPU: no time here is measured."""


def run(args) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if args.json and os.path.exists(args.json):
        raise FileExistsError(f"{args.json} exists; choose another --json file")
    reports = inspect_problem(
        args.batch, args.dim, args.dtype, args.distance, args.precision, targets, args.distributed
    )
    print(
        f"the loss's launches for b = {args.batch}, d = {args.dim}, {args.dtype}, {args.distance} distance, "
        f"{args.precision} products{', queries against keys (torch.distributed)' if args.distributed else ''}"
    )
    print(format_reports(reports))
    print(LEGEND)
    import platform

    import torch
    import triton

    out = {
        "problem": {
            "batch": args.batch,
            "dim": args.dim,
            "dtype": args.dtype,
            "distance": args.distance,
            "precision": args.precision,
        },
        "compiled_with": {
            "triton": triton.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": "snnl kernels " + " ".join(sys.argv[1:]),
        },
        "launches": [asdict(r) for r in reports],
    }
    if args.model:
        from .model import estimate_problem, format_estimates

        estimates = estimate_problem(reports, args.batch, args.dim, args.dtype, distance=args.distance)
        print(format_estimates(estimates))
        out["model"] = estimates
    if args.json:
        with open(args.json, "x") as f:  # never over an existing file
            json.dump(out, f, indent=2)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="snnl kernels", description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError) as error:
        print(f"snnl kernels: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
