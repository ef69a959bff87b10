"""The command line every benchmark script shares: ``--json``, a new file
that is never written over (checked before anything is measured), and the
one writer of it."""

from __future__ import annotations

import argparse
import os

from .measure import write_new_json


def parser(prog: str, doc: str | None, *, json_required: bool = False) -> argparse.ArgumentParser:
    """An argument parser for ``python -m <prog>`` described by the first line
    of ``doc``, with ``--json``."""
    made = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").strip().splitlines()[0])
    made.add_argument(
        "--json", required=json_required, help="write the results here: a new file, never one that exists"
    )
    return made


def parse(made: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The arguments, an existing ``--json`` refused before any work."""
    args = made.parse_args(argv)
    if args.json and os.path.exists(args.json):
        made.error(f"{args.json} exists; choose another --json")
    return args


def write(args: argparse.Namespace, data: dict) -> None:
    """``data`` to ``--json`` when one was given."""
    if args.json:
        write_new_json(args.json, data)
