"""The runner every method shares: claim the output directory, run the seeds,
resume, aggregate and write the records.

A method (``snnl.methods.agarap``'s experiment, ``snnl.methods.n2d``) gives ``execute`` its
run configuration, the data it clusters and a ``run_seed(seed, keep_arrays)``
that trains and scores one seed; the runner does the rest.  With
``resume=True`` finished seeds are read back (while their evaluation options
and trained epochs are unchanged) and an interrupted seed continues from its
last checkpoint.  Under torch.distributed every process trains; the main
process alone evaluates and writes.

The configuration must provide ``to_dict``, ``evaluation()``,
``trained_epochs``, ``label``, ``projection`` and ``device``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .. import distributed
from . import outdir
from ..train.checkpoints import previous_path
from ..atomic import stale_temporaries
from ..train.config import describe_changes
from ..data import Dataset
from .provenance import environment
from .records import ExperimentResult, SeedResult, aggregate
from ..train.loop import resolve_device


def checkpoint_path(out_dir, seed: int) -> Path | None:
    return _checkpoint(Path(out_dir), seed) if out_dir is not None else None


def _checkpoint(out_dir: Path, seed: int) -> Path:
    return out_dir / "checkpoints" / f"seed{seed}.pt"


def _claim_output(out_dir: Path, config, resume: bool, *, under_lock: bool) -> None:
    """The main process checks that the run may write into ``out_dir`` (and,
    resuming, what changes, said on stderr ``under_lock``, the second time;
    see ``snnl.runs.outdir``); every process learns the outcome, so that none
    trains for a run that will not be written."""
    error = None
    if distributed.is_main_process():
        try:
            stored = outdir.claim(out_dir, resume, holding_lock=under_lock)
            if stored is not None:
                changes = outdir.resume_changes(stored, config)
                if changes and under_lock:
                    print(f"resuming {out_dir} with {describe_changes(changes)}", file=sys.stderr)
        except (OSError, ValueError) as caught:
            error = caught
    failed = distributed.all_reduce_tensor(torch.tensor([0.0 if error is None else 1.0]))
    if error is not None:
        raise error
    if float(failed[0]) > 0:
        raise RuntimeError(f"the main process refused the output directory {out_dir} (see its message)")


def check_output(config, out_dir, resume: bool, *, changes: bool = True) -> None:
    """Before any data is read or model trained: ``out_dir`` may take this run
    (``snnl.runs.outdir.check``) and, resuming, ``config`` changes only what a
    resumed run may (``changes``: when ``config`` is already complete), so
    that a mistyped path or a changed dataset is named at once."""
    if out_dir is None:
        if resume:
            raise ValueError("resuming needs the output directory of the run to continue (--out)")
        return
    if not distributed.is_main_process():  # the main process owns the directory (see _claim_output)
        return
    stored = outdir.check(out_dir, resume)
    if stored is not None and changes:
        outdir.resume_changes(stored, config)


def _reusable(finished: Path, config, out_dir: Path, seed: int) -> bool:
    """A finished seed is reused when its evaluation options and trained epochs
    are the current ones; otherwise its stages after training are redone from
    its last checkpoint, which must then exist."""
    stored = outdir.read_seed_record(finished)
    if stored.get("evaluation") == config.evaluation() and stored.get("trained_epochs") == config.trained_epochs:
        return True
    checkpoint = _checkpoint(out_dir, seed)
    if config.trained_epochs is not None and not (checkpoint.is_file() or previous_path(checkpoint).is_file()):
        raise FileNotFoundError(
            f"seed {seed} must be evaluated again (its options changed) but its checkpoint {checkpoint} is gone; "
            "resume with the stored options, or start a new --out"
        )
    return False


def execute(
    config,
    data: Dataset,
    run_seed: Callable[[int, bool], SeedResult],
    out_dir=None,
    *,
    resume: bool = False,
    data_files: tuple = (),
    progress=True,
) -> ExperimentResult:
    """Run ``run_seed(seed, keep_arrays)`` for every seed of ``config`` and collect the results.

    ``data`` is what was clustered (its labels score the clustering; its raw
    inputs appear in the projection figure); ``data_files`` every file read.
    With ``out_dir``, the run holds the directory's lock throughout (main process).
    """
    main = distributed.is_main_process()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is None:
        return _execute(config, data, run_seed, None, resume, data_files, progress)
    # before the lock: never create a lock file in a refused directory
    _claim_output(out_dir, config, resume, under_lock=False)
    with outdir.locked(out_dir) if main else contextlib.nullcontext():
        # again, under the lock, where it counts: two runs cannot both pass it
        _claim_output(out_dir, config, resume, under_lock=True)
        if main:
            for stale in stale_temporaries(out_dir):  # a killed writer's (the file it replaced is intact)
                stale.unlink(missing_ok=True)
            outdir.write_config(out_dir, config)
        distributed.barrier()
        return _execute(config, data, run_seed, out_dir, resume, data_files, progress)


def _execute(config, data, run_seed, out_dir, resume, data_files, progress) -> ExperimentResult:
    main = distributed.is_main_process()
    speak = main and progress not in (False, "none")
    results = []
    for position, seed in enumerate(config.seeds):
        first = position == 0  # its arrays and history feed embeddings.npz and the figures
        finished = out_dir / "seeds" / f"seed{seed}.json" if out_dir is not None else None
        if resume and not first and finished is not None:  # a resumed run reuses each finished seed but the first
            if finished.is_file() and _reusable(finished, config, out_dir, seed):
                results.append(SeedResult.from_record(outdir.read_seed_record(finished)))
                continue
            if not finished.is_file() and speak:
                # a seed whose record is missing is trained from its checkpoint or from the start:
                # say so before minutes of work, so a record left out of seeds/ is noticed now
                how = "from its checkpoint" if _checkpoint(out_dir, seed).is_file() else "from the start"
                print(f"seed {seed}: no finished record in {finished.parent}, training it {how}", file=sys.stderr)
        result = run_seed(seed, first)
        if finished is not None and main:
            outdir.write_seed(finished, result, config)
        distributed.barrier()  # evaluation and writing happen on the main process
        results.append(result)
    if not main:  # the other processes only trained
        return ExperimentResult(config, results, data.y, {}, {})
    summary = aggregate([r.metrics for r in results])
    experiment = ExperimentResult(
        config, results, data.y, summary, environment(resolve_device(config.device)), tuple(data_files or data.files)
    )
    if out_dir is not None:
        outdir.write_experiment(out_dir, experiment, data, progress=speak)
    return experiment
