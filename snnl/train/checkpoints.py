"""Checkpoint files that survive crashes and notice damage.

A checkpoint is written to a temporary file and renamed into place, and the
one it replaces is kept as ``<name>.prev.pt``: a crash at any moment leaves
at least one complete checkpoint.  The file holds the serialised state and its
SHA-256, checked on every load, so a truncated file, a file with flipped bits
or anything else that is not an intact snnl checkpoint fails with a
``CheckpointError`` naming the file instead of loading wrong numbers.
``load_for_resume`` falls back to the previous checkpoint when the latest is
damaged (resuming from it gives the same result: training is deterministic
from any checkpoint).

Files written before checksums existed (snnl 0.1.0, the state saved as it
is) still load, with a warning that they could not be verified.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..autoencoder import Autoencoder
from .config import TrainConfig

# the layout of the training state inside the wrapper (``checkpoint_state``)
CHECKPOINT_VERSION = 1
FORMAT = "snnl-checkpoint-1"  # the wrapper: {"format", "sha256", "payload"}, the payload a uint8 tensor


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, damaged or not an snnl checkpoint."""


def previous_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save(state: dict, path: str | os.PathLike, *, keep_previous: bool = True) -> None:
    """Write ``state`` with its checksum, atomically; keep the file it replaces
    as ``previous_path(path)`` when ``keep_previous``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    # The payload as a uint8 tensor: stored as raw bytes in the file (a bytes
    # object would be pickled as text), so damage to it reaches the checksum.
    wrapper = {
        "format": FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    with atomic_path(path) as temporary:
        torch.save(wrapper, temporary)
        if keep_previous and path.exists():  # the last step before the new file takes its place
            os.replace(path, previous_path(path))


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    """The state in a checkpoint, verified against its checksum."""
    path = Path(path)
    try:
        wrapper = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated, empty, not a torch file, flipped bits in its structure
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"{path} cannot be read ({type(error).__name__}: {first_line}): the file is truncated or damaged"
        ) from None
    if isinstance(wrapper, dict) and wrapper.get("format") == FORMAT:
        payload = wrapper.get("payload")
        payload = payload.cpu().numpy().tobytes() if isinstance(payload, torch.Tensor) else b""
        if hashlib.sha256(payload).hexdigest() != wrapper.get("sha256"):
            raise CheckpointError(f"{path} is damaged: its contents do not match the checksum stored with them")
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    if isinstance(wrapper, dict) and wrapper.get("version") == 1 and "model" in wrapper:
        warnings.warn(f"{path} was written without a checksum (snnl 0.1.0): loaded, but not verified", stacklevel=2)
        return torch.load(path, map_location=map_location, weights_only=True) if map_location != "cpu" else wrapper
    raise CheckpointError(f"{path} is not an snnl checkpoint")


def load_for_resume(path: str | os.PathLike, map_location="cpu") -> tuple[dict | None, Path | None]:
    """(state, the file it came from) to resume from: the latest checkpoint, or
    the previous one when the latest is damaged or missing; (None, None) when
    there is neither.  Raises ``CheckpointError`` when every one is damaged."""
    path = Path(path)
    previous = previous_path(path)
    problems = []
    for candidate in (path, previous):
        if not candidate.is_file():
            continue
        try:
            state = load(candidate, map_location)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from the checkpoint before it, {candidate}", stacklevel=2)
        return state, candidate
    if problems:
        raise CheckpointError(
            "; ".join(problems) + f". No intact checkpoint is left: delete {path} (and {previous.name}) to train "
            "this seed again from the start, or use a new --out"
        )
    return None, None


# the training state inside the file: what the loop saves and resumes from


def snapshot_path(checkpoint_path: Path, epochs_done: int) -> Path:
    return checkpoint_path.with_name(f"{checkpoint_path.stem}-epoch{epochs_done:04d}.pt")


def verify_version(checkpoint: dict, source) -> dict:
    """``checkpoint`` when it holds snnl training state of this layout (the one check of both load paths)."""
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{source}: not an snnl training checkpoint (version {checkpoint.get('version')!r})")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint, verified (``snnl.train.checkpoints.load``)."""
    return verify_version(load(path, map_location), path)


def model_from_checkpoint(path: str | os.PathLike, map_location="cpu") -> Autoencoder:
    checkpoint = load_checkpoint(path, map_location)
    model = Autoencoder(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model


def checkpoint_state(
    model: Autoencoder,
    config: TrainConfig,
    seed: int,
    epoch: int,
    optimizer=None,
    random_states: dict | None = None,
    history: list[dict] | None = None,
) -> dict:
    """What a checkpoint holds: the model and what made it, and, to resume from
    it (``optimizer`` given), the optimizer, every random state training draws
    on and the history.  A snapshot is the first part alone."""
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "seed": seed,
        "config": config.to_dict(),
        "model_config": model.config(),
        "model": model.state_dict(),
    }
    if optimizer is not None:
        state.update(optimizer=optimizer.state_dict(), rng=random_states, history=history)
    return state
