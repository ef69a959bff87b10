"""The options of ``snnl kernels`` (the lab, ``snnl.kernel_tools.lab``), as
data: the CLI builds its sub-parser from them without importing torch or
Triton (``snnl --help`` stays fast), and hands the parsed values to the lab,
which runs in a child process of its own (without TRITON_INTERPRET)."""

from __future__ import annotations

import argparse

from ..choices import DISTANCES, PRECISIONS

TARGETS = {"sm_80": 80, "sm_90": 90}  # the compile targets, and their compute capabilities
DTYPES = ("float32", "bfloat16", "float16", "float64")

OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--batch", dict(type=int, default=8192, help="rows of the batch the launches are sized for")),
    ("--dim", dict(type=int, default=128, help="its feature dimension")),
    ("--dtype", dict(choices=DTYPES, default="float32", help="of the points")),
    ("--distance", dict(choices=DISTANCES, default=DISTANCES[0], help="the pair distance")),
    ("--precision", dict(choices=PRECISIONS, default=PRECISIONS[0], help="of fp32 products on the tensor cores")),
    ("--targets", dict(default=",".join(TARGETS), help="comma-separated, from " + ", ".join(TARGETS))),
    ("--distributed", dict(action="store_true", help="the queries-vs-keys launches of torch.distributed")),
    ("--model", dict(action="store_true", help="add the performance model's estimates (a model, not a measurement)")),
    ("--json", dict(default=None, help="also write the reports (and estimates) to this file")),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, options in OPTIONS:
        parser.add_argument(flag, **options)


def to_argv(args: argparse.Namespace) -> list[str]:
    """The command line that gives the lab these parsed values."""
    argv = []
    for flag, options in OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if options.get("action") == "store_true":
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return argv
