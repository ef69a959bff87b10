"""The output directory of a run: what it holds, whose it is, who may write to it.

A run's directory holds:

    config.json       the run's configuration (what --resume continues)
    metrics.json      configuration, per-seed metrics and stage times, mean /
                      std / best, versions, device, wall time
    embeddings.npz    z (the points clustered for the first seed: test codes,
                      or N2D's manifold embedding), y (true labels), clusters
                      (the assignment); N2D adds codes (autoencoder codes)
    seeds/seedN.json  each finished seed (what --resume reads back)
    checkpoints/      seedN.pt: the last epoch's model, optimizer and RNG state
    figures/          training curves, 2-D projections, confusion matrix (PNG)

Every file is written to a temporary name and renamed into place
(``snnl.atomic``).

- ``claim``: a run writes only into a new or empty directory, or into the
  directory of an earlier snnl run when resuming it.  A directory holding
  anything else is refused, naming what is there: snnl never writes into
  someone else's files.
- ``locked``: one process at a time.  A second run on the same directory (two
  terminals, a cluster job started twice) fails at once instead of both
  writing; the lock dies with the process that holds it, so a crash leaves no
  stale lock behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_text

LOCK_NAME = ".snnl.lock"
METHODS = ("snnl", "n2d")  # config.json "method" of the two kinds of run


def stored_config(out_dir: Path) -> dict | None:
    """The configuration of the snnl run in ``out_dir``, or None if it holds none."""
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("method") in METHODS else None


def check(out_dir: str | os.PathLike, resume: bool, *, holding_lock: bool = False) -> dict | None:
    """What ``claim`` would say, without creating anything: called before any
    data is read, so that a wrong ``--out`` fails at once.  Returns the stored
    configuration when resuming (None for a fresh directory).  A directory
    whose lock another run holds is in use (``holding_lock``: the caller
    holds it)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a directory: choose another --out")
    holder = None if holding_lock else user_of(out_dir)
    if holder is not None:  # a run that is writing there now: not one to resume, nor a leftover
        raise BlockingIOError(_in_use(out_dir, holder))
    stored = stored_config(out_dir) if out_dir.exists() else None
    if stored is not None:
        if not resume:
            raise FileExistsError(
                f"{out_dir} already holds a run: pass --resume to continue it, or choose another --out"
            )
        return stored
    entries = (
        sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if p.name != LOCK_NAME)
        if out_dir.exists()
        else []
    )
    if entries:
        shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
        raise FileExistsError(
            f"{out_dir} is not empty and holds no snnl run ({shown}): snnl writes only into a new or empty "
            "directory, or one of its own runs; choose another --out"
        )
    if resume:
        # a mistyped path would otherwise start the whole run afresh
        where = "does not exist" if not out_dir.exists() else "is empty"
        raise FileNotFoundError(
            f"--resume: {out_dir} {where}, so there is no run to continue; check the path, "
            "or leave out --resume to start a new run there"
        )
    return None


def claim(out_dir: str | os.PathLike, resume: bool, *, holding_lock: bool = False) -> dict | None:
    """Make sure ``out_dir`` may receive this run (``check``) and create it;
    return the stored configuration when resuming one (None for a fresh
    directory)."""
    stored = check(out_dir, resume, holding_lock=holding_lock)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return stored


def _in_use(out_dir: Path, holder: str) -> str:
    return f"{out_dir} is in use by another snnl run ({holder}); wait for it to finish or choose another --out"


def user_of(out_dir: str | os.PathLike) -> str | None:
    """Who holds ``out_dir``'s lock now (its "pid ... on ..." line), or None
    when no process does (or the platform has no advisory locks)."""
    path = Path(out_dir) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@contextmanager
def locked(out_dir: str | os.PathLike):
    """Hold ``out_dir``'s lock for the life of the block (POSIX advisory lock)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    handle = open(path, "a+")
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock, as before
            pass
        except OSError:
            handle.seek(0)
            raise BlockingIOError(_in_use(out_dir, handle.read().strip() or "another process")) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this machine'}")
        handle.flush()
        yield
    finally:
        handle.close()


def resume_changes(stored: dict, config) -> list[tuple[str, object, object]]:
    """The changes a resumed run makes to its stored configuration, as
    (field, stored, new).  Raises ``ValueError`` naming every change that
    would alter the models trained so far: allowed are the fields marked as
    evaluation or placement options (``snnl.runs.config``: the stages after
    training are redone; where data and computation live, and the seeds) and
    the nested training configuration's resumable fields (a larger number of
    epochs extends training)."""
    from ..train.config import TrainConfig, config_changes, describe_changes

    stored = type(config).from_dict(stored).to_dict()  # fields added since take the defaults of then
    changes = config_changes(stored, config.to_dict())
    free = set(config.fields_resumed_as("evaluation")) | set(config.fields_resumed_as("placement"))
    training = config.TRAINING_FIELD
    allowed_training = {f"{training}.{name}" for name in TrainConfig.resumable_fields()}
    refused = [c for c in changes if c[0].split(".")[0] not in free and c[0] not in allowed_training]
    if refused:
        raise ValueError(
            f"--resume cannot change what the trained models depend on: {describe_changes(refused)}. "
            "Leave these options out to use the stored ones, or start a new --out"
        )
    for name, old, new in changes:
        if name == f"{training}.epochs" and isinstance(old, int) and isinstance(new, int) and new < old:
            raise ValueError(
                f"--resume cannot shorten training ({name}: {old} -> {new}): the checkpoints are "
                "further along; use a new --out for fewer epochs"
            )
    return changes


def write_config(out_dir: Path, config) -> None:
    write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2))


def write_seed(path: Path, result, config) -> None:
    """A finished seed, with what it depends on: the evaluation options and the
    epochs trained (``--resume`` reuses it only while both are unchanged)."""
    write_text(
        path,
        json.dumps(
            {**result.to_record(), "evaluation": config.evaluation(), "trained_epochs": config.trained_epochs}, indent=2
        ),
    )


def read_seed_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): delete it to evaluate that seed again") from None


def _write_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, **arrays)


def write_experiment(out_dir: Path, experiment, data, *, progress: bool = False) -> None:
    """metrics.json, embeddings.npz and the figures (``progress``: say on
    stderr when the figures start and how long they took: a t-SNE of a few
    thousand points can outlast a short training)."""
    from ..report import figures

    first = experiment.seeds[0]
    metrics = {
        "config": experiment.config.to_dict(),
        "seeds": [
            {"seed": s.seed, "metrics": s.metrics, "backends": s.backends, "seconds": s.seconds}
            for s in experiment.seeds
        ],
        "summary": experiment.summary,
        "environment": experiment.environment,
        "data_files": list(experiment.data_files),
    }
    if first.codes is not None:
        _write_npz(out_dir / "embeddings.npz", z=first.codes, y=data.y, clusters=first.clusters, **first.arrays)
        started = time.perf_counter()
        projection = experiment.config.projection
        if progress:
            how = (
                "without projections"
                if projection == "none"
                else f"with {figures.PROJECTION_NAMES[projection]} projections"
                + (" (--projection pca is quicker)" if projection == "tsne" else "")
            )
            print(f"figures: {out_dir / 'figures'}, {how} ...", file=sys.stderr, flush=True)
        figures.write_all(out_dir / "figures", experiment, data)
        metrics["seeds"][0]["seconds"]["figures"] = time.perf_counter() - started
        if progress:
            print(f"figures: done in {metrics['seeds'][0]['seconds']['figures']:.1f} s", file=sys.stderr, flush=True)
        metrics["environment"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # after the last stage
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
