"""Training the SNNL autoencoder: the epochs, resume, DDP.

Each batch's loss is ``snnl.train.objective.batch_loss`` (reconstruction +
alpha * SNNL over the hidden layers).  A checkpoint (model, optimizer, random
states, history: ``snnl.train.checkpoints.checkpoint_state``) is written
atomically after every epoch; resuming from it gives the same result as an
uninterrupted run with the same seed.  Under torch.distributed the same loop
trains with DDP on slices of each global batch (see ``train_autoencoder``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..autoencoder import Autoencoder
from ..progress import Progress
from . import checkpoints
from .checkpoints import checkpoint_state, snapshot_path, verify_version
from .config import TrainConfig, config_changes, describe_changes
from .objective import batch_loss
from .positives import Partners
from .pseudo_labels import epoch_pseudo_labels


@dataclass
class TrainResult:
    model: Autoencoder
    history: list[dict] = field(default_factory=list)


def training_seconds(history: list[dict], fallback: float) -> float:
    """A training's own time: the sum of its epochs' times, across every
    resumption (the history travels in the checkpoint), so that resuming a
    finished run to evaluate it again does not record the seconds it took to
    load as its training time; ``fallback`` (this process's wall time) for a
    training without epochs."""
    return float(sum(record["seconds"] for record in history)) if history else fallback


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device")
    return device


def check_training_data(x: np.ndarray, y: np.ndarray | None, config: TrainConfig) -> None:
    """What training ``config`` needs of ``x`` and ``y``, checked before any work
    (the runs call it before they claim their output directory)."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"training data must be a 2-D array with at least 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training data contains NaN or Inf")
    if config.reconstruction_loss == "bce" and (x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(
            f"training data spans [{x.min():.3g}, {x.max():.3g}]; the logistic reconstruction "
            "(binary cross-entropy) needs inputs scaled to [0, 1]"
        )
    if config.pseudo_labels_from is not None:
        if config.pseudo_label_clusters is None:
            raise ValueError(
                f"{config.name}: pseudo_label_clusters is not set: how many clusters the pseudo-labels "
                "take (the runs and SNNLKMeans set it to the clusters they will find)"
            )
        if config.pseudo_label_clusters > len(x):
            raise ValueError(f"{len(x)} training rows cannot form {config.pseudo_label_clusters} pseudo-label clusters")
    if config.snnl and config.supervised:
        if y is None:
            raise ValueError(f"{config.name} is supervised: it needs labels for the training data")
        if len(y) != len(x):
            raise ValueError(f"{len(x)} training rows but {len(y)} labels")


def build_model(input_dim: int, config: TrainConfig) -> Autoencoder:
    return Autoencoder(
        input_dim, config.code_dim, config.hidden, config.code_activation, config.output_activation, config.init
    )


def _progress_fields(config: TrainConfig, reconstruction: float, snnl: float, temperature: float) -> dict:
    """Progress-bar fields; the SNNL term and its temperature only where the loss has them."""
    fields = {"rec": f"{reconstruction:.4f}"}
    if config.snnl:
        fields.update(snnl=f"{snnl:.4f}", T=f"{temperature:.3g}")
    return fields


def plateaued(history: list[dict], patience: int | None) -> bool:
    """Early stopping: the last ``patience`` epochs did not lower the loss below
    the best before them.  Derived from the history alone, so resuming agrees."""
    if patience is None or len(history) <= patience:
        return False
    return min(h["loss"] for h in history[-patience:]) >= min(h["loss"] for h in history[:-patience])


def _seeded_model(input_dim: int, config: TrainConfig, seed: int, device: torch.device) -> Autoencoder:
    """The model's initial weights from ``seed``, drawn from a forked RNG: the
    caller's global random state is left as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return build_model(input_dim, config).to(device)


def _check_resumable(checkpoint: dict, config: TrainConfig, seed: int, path: Path) -> None:
    """A checkpoint continues only the configuration and seed that wrote it."""
    if checkpoint["seed"] != seed:
        raise ValueError(f"{path} belongs to seed {checkpoint['seed']}, not {seed}")
    # Fields added to TrainConfig since the checkpoint was written take their defaults.
    stored = {**TrainConfig().to_dict(), **checkpoint["config"]}
    refused = [c for c in config_changes(stored, config.to_dict()) if c[0] not in TrainConfig.resumable_fields()]
    if refused:
        raise ValueError(
            f"{path} was trained with other options ({describe_changes(refused)}); resume with the "
            "stored options (leave them out) or start a new output directory"
        )
    if config.epochs < checkpoint["epoch"] + 1:
        raise ValueError(
            f"{path} has already trained {checkpoint['epoch'] + 1} epochs; --epochs {config.epochs} "
            "cannot undo that (use a larger value, or a new output directory)"
        )


def make_optimizer(model, config: TrainConfig) -> torch.optim.Adam:
    """Adam, in torch's fused implementation where the device has one (CPU and
    CUDA: one vectorised pass over all parameters, 5x faster than the
    per-tensor loop on a 2-core CPU for the SNNL autoencoder)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps, fused=True)
    except RuntimeError:  # a device without the fused kernel
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=config.adam_eps)


@dataclass
class _State:
    """The training state an epoch advances (and a checkpoint restores)."""

    model: Autoencoder
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    partners: Partners | None = None  # label-free positives only
    history: list[dict] = field(default_factory=list)

    def random_states(self) -> dict:
        """Every random state training draws on (and the neighbour table label-free partners drew)."""
        states: dict = {"shuffle": self.shuffle.get_state()}
        if self.partners is not None:
            states["partners"] = self.partners.state()
        return states

    def set_random_states(self, states: dict) -> None:
        self.shuffle.set_state(states["shuffle"])
        if self.partners is not None:
            self.partners.set_state(states["partners"])

    @property
    def next_epoch(self) -> int:
        return len(self.history)


def _restore(state: _State, checkpoint_path: Path | None, config: TrainConfig, seed: int, device) -> None:
    """Continue ``state`` from the checkpoint at ``checkpoint_path`` (or the one
    before it, when the latest is damaged), if there is one."""
    if checkpoint_path is None:
        return
    checkpoint, source = checkpoints.load_for_resume(checkpoint_path, map_location=device)
    if checkpoint is None:
        return
    verify_version(checkpoint, source)
    assert source is not None, "a loaded checkpoint has a path"
    _check_resumable(checkpoint, config, seed, source)
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])  # and its implementation (fused or not) with it
    state.set_random_states(checkpoint["rng"])
    state.history = checkpoint["history"]


def _save(state: _State, checkpoint_path: Path, config: TrainConfig, seed: int, snapshot_every: int | None) -> None:
    epoch = state.next_epoch - 1
    checkpoints.save(
        checkpoint_state(state.model, config, seed, epoch, state.optimizer, state.random_states(), state.history),
        checkpoint_path,
    )
    if snapshot_every and (epoch + 1) % snapshot_every == 0:
        checkpoints.save(
            checkpoint_state(state.model, config, seed, epoch),
            snapshot_path(checkpoint_path, epoch + 1),
            keep_previous=False,
        )


def _run_epoch(
    state: _State,
    network,
    x_all,
    y_all,
    epoch: int,
    config: TrainConfig,
    temperature: float,
    device,
    bars: Progress,
    checkpoint_path,
    pseudo_all: torch.Tensor | None = None,
) -> dict:
    """One pass over the shuffled data; the epoch's record (means over its batches).

    Under torch.distributed each global batch (drawn from the same shuffled
    order on every process) is split into contiguous slices, one per process:
    together they are exactly the single-process batch."""
    world, rank = distributed.world_size(), distributed.rank()
    epoch_started = time.perf_counter()
    n_batches = -(-len(x_all) // config.batch_size)
    order = torch.randperm(len(x_all), generator=state.shuffle)
    totals: torch.Tensor | None = None
    layer_totals: torch.Tensor | None = None
    layer_batches, layers, snnl = 0, [], 0.0
    for b in bars.batches(epoch, n_batches):
        global_index = order[b * config.batch_size : (b + 1) * config.batch_size]
        rows = torch.tensor_split(torch.arange(len(global_index)), world)[rank]  # this process's slice
        index = global_index[rows]
        xb = x_all[index].to(device, non_blocking=True)
        yb = y_all[index].to(device, non_blocking=True)
        partners = state.partners(global_index, rows, device) if state.partners is not None else None
        pseudo = pseudo_all[index].to(device, non_blocking=True) if pseudo_all is not None else None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.amp):
            loss, reconstruction, per_layer = batch_loss(
                network, xb, yb, temperature, config, len(global_index), partners, pseudo
            )
        # one collective for the logged values: the global batch's loss terms
        values = distributed.all_reduce_tensor(
            torch.stack([loss.detach(), reconstruction.detach(), *(v.detach() for v in per_layer)]).double()
        )
        if not torch.isfinite(values[0]):
            raise FloatingPointError(
                f"{config.name}: the training loss became {values[0].item()} at epoch {epoch + 1}, "
                f"batch {b + 1}; the last good checkpoint is {checkpoint_path}"
            )
        state.optimizer.zero_grad(set_to_none=True)
        # DistributedDataParallel averages gradients over processes: scale the
        # shares so that the average is the gradient of the global batch.
        (loss * world).backward()
        state.optimizer.step()
        totals = values[:2] if totals is None else totals + values[:2]
        if len(values) > 2:  # a batch of one row has no SNNL
            layer_totals = values[2:] if layer_totals is None else layer_totals + values[2:]
            layer_batches += 1
        layers = (layer_totals / max(layer_batches, 1)).tolist() if layer_totals is not None else []
        snnl = (sum(layers) if config.combine == "sum" else min(layers)) if layers else 0.0
        bars.batch_done(_progress_fields(config, values[1].item(), snnl, temperature))
    assert totals is not None, "an epoch has at least one batch"
    means = (totals / n_batches).tolist()
    return {
        "epoch": epoch,
        "temperature": temperature if config.snnl else None,  # a plain autoencoder has no T
        "loss": means[0],
        "reconstruction": means[1],
        # after the last batch: the layers' epoch means, combined; None without an SNNL term (N2D's
        # autoencoder, baseline-ae), whose records showed a column of zeros
        "snnl": snnl if config.snnl else None,
        "snnl_per_layer": layers,
        "seconds": time.perf_counter() - epoch_started,
    }


def train_autoencoder(
    x: np.ndarray,
    y: np.ndarray | None,
    config: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool | str = True,
    snapshot_every: int | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    image_shape: tuple[int, int] | None = None,
) -> TrainResult:
    """Train an autoencoder on ``x`` (labels ``y`` for the supervised SNNL).

    ``checkpoint_path``: written after every epoch (the one before is kept,
    see ``snnl.train.checkpoints``).  ``resume``: continue from it when it exists
    (it must come from the same configuration and seed, but for a larger
    ``epochs`` or another loss backend; a damaged checkpoint falls back to the
    one before it).  ``progress``: see ``snnl.progress.Progress`` (True:
    bars on a terminal, a line per epoch otherwise; ``"lines"``; False: none).
    ``snapshot_every``: also keep the model (weights only) after every that
    many epochs beside the checkpoint, as ``<name>-epochNNNN.pt``, to evaluate
    training on the way.  ``on_epoch_end(record)``: called after each epoch
    (once its checkpoint is written) with the epoch's history record; an
    exception it raises stops training there, as an interruption would.
    ``image_shape``: the rows' image shape, for the views of label-free
    positives (``config.positives``; tabular views without it).
    """
    x = np.asarray(x, dtype=np.float32)
    y = None if y is None else np.asarray(y, dtype=np.int64)
    check_training_data(x, y, config)
    config.check_dependencies()
    device = resolve_device(device)
    if config.amp and device.type != "cuda":
        raise ValueError("amp (bfloat16 autocast) needs a CUDA device")
    schedule = config.temperature_schedule()

    model = _seeded_model(x.shape[1], config, seed, device)
    partners = None
    if config.positives != "classes":
        partners = Partners(
            config.positives,
            torch.from_numpy(x),
            neighbours=config.neighbours,
            seed=seed,
            image_shape=image_shape,
            space=config.neighbour_space,
            per_anchor=config.partners,
        )
    state = _State(model, make_optimizer(model, config), torch.Generator().manual_seed(seed), partners)
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    if resume:
        _restore(state, checkpoint_path, config, seed, device)
    start_epoch = state.next_epoch

    main = distributed.is_main_process()
    network: torch.nn.Module = model
    if distributed.world_size() > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    x_all = torch.from_numpy(x)
    y_all = torch.from_numpy(y) if y is not None else torch.zeros(len(x), dtype=torch.int64)
    last_epoch = start_epoch if plateaued(state.history, config.patience) else config.epochs  # stopped early before
    bars = Progress(progress if main else False, config.name, start_epoch, config.epochs)
    # searched before the first epoch, and said (a UMAP of 60,000 images takes minutes); every
    # process takes part (under torch.distributed the main one searches, the others receive)
    pending = partners.search_pending if partners is not None and start_epoch < last_epoch else None
    if partners is not None and pending is not None:
        bars.note(f"{config.name}: searching {pending} (once: the checkpoints keep them)")
        started = time.perf_counter()
        partners.search()
        bars.note(f"{config.name}: neighbours found in {time.perf_counter() - started:.0f} s")
    model.train()
    try:
        for epoch in range(start_epoch, last_epoch):
            temperature = schedule(epoch)
            clustering_started = time.perf_counter()
            pseudo_all = epoch_pseudo_labels(model, x_all, config, seed, epoch)
            clustering = time.perf_counter() - clustering_started
            record = _run_epoch(
                state, network, x_all, y_all, epoch, config, temperature, device, bars, checkpoint_path, pseudo_all
            )
            record["seconds"] += clustering  # the epoch's time includes clustering its codes
            state.history.append(record)
            bars.epoch_done(
                epoch,
                {
                    "loss": f"{record['loss']:.4f}",
                    **_progress_fields(config, record["reconstruction"], record["snnl"], temperature),
                },
                record["seconds"],
            )
            if checkpoint_path is not None and main:
                _save(state, checkpoint_path, config, seed, snapshot_every)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if plateaued(state.history, config.patience):
                bars.note(
                    f"{config.name}: no improvement in {config.patience} epochs, stopping after epoch {epoch + 1}"
                )
                break
    finally:
        bars.close()  # also on an interruption: its message then starts on a line of its own
    distributed.barrier()  # the last checkpoint is on disk before anyone reads it
    return TrainResult(model, state.history)
