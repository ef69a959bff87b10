"""torch.distributed with the gloo backend on CPU: two processes on loopback.

The global-batch loss (values and gradients) must equal the single-process
loss of the concatenated batch, for every backend, and under DDP with no
scaling by hand; DDP training must follow single-process training; and a
`snnl run` under torchrun must leave the same output layout as a
single-process run.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from snnl import distributed, soft_nearest_neighbor_loss
from snnl.train.config import preset
from snnl.train.loop import train_autoencoder

from .label_free_cases import VARIANTS
from .tiny import TRAINING

NEIGHBOUR_VIEWS = VARIANTS["neighbour-views"]  # in the inputs' space: no UMAP in every worker

WORLD = 2
SIZES = (7, 12)  # uneven on purpose


def _init(rank: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)


def _finish(rank: int, out: str) -> None:
    """A worker's last step: wait for the others to finish their work too
    (rank 0 saves after training), leave the process group, say it is done."""
    dist.barrier()
    dist.destroy_process_group()
    Path(out, f"done{rank}").touch()


def _spawn(worker, tmp_path: Path, *args) -> None:
    """Run ``worker(rank, rendezvous, out, *args)`` in WORLD processes.

    A worker that aborts with SIGABRT ("terminate called without an active
    exception") after ``_finish`` has run did all its work and left its
    process group: the abort is in the C++ teardown of the exiting
    interpreter, not in the code under test.  CI saw it twice, in the
    label-free training cases only: those search neighbours with faiss, whose
    wheels bring a second OpenMP runtime, and whose threads numbered the
    cores in these workers (torchrun sets OMP_NUM_THREADS=1, and never
    aborted).  faiss now runs with torch's thread count (1 here) and the
    CPU path's worker threads are joined before the process group goes; the
    abort was not reproduced here (10 runs of the label-free cases on a
    busy 2-core machine, 30 runs of faiss searches in spawned gloo workers),
    so the tolerance stays until CI shows it gone: the results are then
    checked as usual, with a warning.  An abort before ``_finish``, or any
    other failure, fails the test."""
    try:
        mp.spawn(worker, args=(str(tmp_path / "rdv"), str(tmp_path), *args), nprocs=WORLD)
    except mp.ProcessExitedException as error:
        done = [rank for rank in range(WORLD) if (tmp_path / f"done{rank}").is_file()]
        if error.signal_name != "SIGABRT" or len(done) < WORLD:
            raise
        warnings.warn(f"worker {error.error_index} aborted at interpreter exit, after finishing its work", stacklevel=2)


def _batch(distance: str):
    g = torch.Generator().manual_seed(11)
    z = torch.randn(sum(SIZES), 6, generator=g, dtype=torch.float64)
    if distance == "euclidean":
        z = z / 3
    labels = torch.randint(0, 3, (sum(SIZES),), generator=g)
    labels[0] = 42  # a singleton
    return z, labels


def _loss_worker(rank: int, rendezvous: str, out: str, backend: str, distance: str, eps: float) -> None:
    _init(rank, rendezvous)
    z, labels = _batch(distance)
    start = sum(SIZES[:rank])
    local = z[start : start + SIZES[rank]].clone().requires_grad_(True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    share = distributed.global_loss_share(
        local, labels[start : start + SIZES[rank]], t, distance=distance, eps=eps, backend=backend
    )
    share.backward()
    torch.save({"share": share.detach(), "grad": local.grad, "grad_t": t.grad}, f"{out}/rank{rank}.pt")
    _finish(rank, out)


@pytest.mark.slow
@pytest.mark.parametrize("distance,eps", [("cosine", 1e-5), ("euclidean", 0.0)])
def test_global_loss_shares_add_up_to_the_single_process_loss(tmp_path, backend, distance, eps):
    _spawn(_loss_worker, tmp_path, backend, distance, eps)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z, labels = _batch(distance)
    z.requires_grad_(True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    loss = soft_nearest_neighbor_loss(z, labels, t, distance=distance, eps=eps, backend="reference")
    loss.backward()
    total = sum(p["share"] for p in parts)
    torch.testing.assert_close(total, loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), z.grad, rtol=1e-10, atol=1e-13)
    # Each process holds the gradient of its own share for T; they add up.
    torch.testing.assert_close(sum(p["grad_t"] for p in parts), t.grad, rtol=1e-10, atol=1e-13)


def _ddp_worker(rank: int, rendezvous: str, out: str, backend: str, views: int) -> None:
    # DistributedDataParallel around a model, the loss called as it is: its
    # value is the global batch's on every process, and after DDP averages
    # the gradients they are the single-process ones
    _init(rank, rendezvous)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    group = dist.new_group(list(range(WORLD)))  # a process group passed in, as under FSDP / HSDP
    x, labels = _batch("cosine")
    start = sum(SIZES[:rank])
    local = x[start : start + SIZES[rank]]
    if views > 1:  # the same samples twice, shifted: views with no labels, global sample ids
        local = torch.stack([local, local + 0.1], 1)
        loss = distributed.global_soft_nearest_neighbor_loss(ddp(local), None, 0.4, group=group, backend=backend)
    else:
        loss = distributed.global_soft_nearest_neighbor_loss(
            ddp(local), labels[start : start + SIZES[rank]], 0.4, group=group, backend=backend
        )
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()]}, f"{out}/rank{rank}.pt")
    _finish(rank, out)


@pytest.mark.slow
@pytest.mark.parametrize("backend,views", [("reference", 1), ("blocked", 1), ("blocked", 2)])
def test_ddp_gradients_equal_single_process_ones_with_no_scaling(tmp_path, backend, views):
    _spawn(_ddp_worker, tmp_path, backend, views)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5).double()
    x, labels = _batch("cosine")
    if views > 1:
        loss = soft_nearest_neighbor_loss(model(torch.stack([x, x + 0.1], 1)), None, 0.4, backend="reference")
    else:
        loss = soft_nearest_neighbor_loss(model(x), labels, 0.4, backend="reference")
    loss.backward()
    for part in parts:
        torch.testing.assert_close(part["loss"], loss.detach(), rtol=1e-12, atol=1e-14)
        for got, expected in zip(part["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_without_process_group_it_is_the_ordinary_loss():
    z, labels = _batch("cosine")
    torch.testing.assert_close(
        distributed.global_soft_nearest_neighbor_loss(z, labels, 0.5), soft_nearest_neighbor_loss(z, labels, 0.5)
    )
    torch.testing.assert_close(
        distributed.global_soft_nearest_neighbor_loss(z, labels, 0.5, reduction="sum", eps=0.0),
        soft_nearest_neighbor_loss(z, labels, 0.5, reduction="sum", eps=0.0),
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        distributed.global_soft_nearest_neighbor_loss(z, labels, temprature=0.5)
    with pytest.raises(TypeError, match="keys / key_labels cannot be given"):
        distributed.global_soft_nearest_neighbor_loss(z, labels, keys=z, key_labels=labels)


# an odd batch (33) so that the global batch splits unevenly across the processes
TRAIN = dict(TRAINING, batch_size=33)


# the paper's SNNL both ways of combining layers, and label-free SNNL, whose
# partners (tabular views of neighbours) every process must draw alike
TRAINED = {
    "sum": ("snnl-5", {"combine": "sum"}),
    "min": ("snnl-5", {"combine": "min"}),
    "label-free": ("snnl-label-free", NEIGHBOUR_VIEWS),
    "label-free, 2 partners": ("snnl-label-free", {**NEIGHBOUR_VIEWS, "partners": 2}),
    # and cluster positives, which the main process computes for all
    "label-free, clusters": (
        "snnl-label-free",
        {**NEIGHBOUR_VIEWS, "pseudo_labels_from": 1, "pseudo_label_clusters": 4},
    ),
}


def _train_worker(rank: int, rendezvous: str, out: str, combine: str) -> None:
    _init(rank, rendezvous)
    rng = np.random.default_rng(0)
    x = rng.random((100, 12), dtype=np.float32)
    y = rng.integers(0, 4, 100)
    name, options = TRAINED[combine]
    config = preset(name, **options, **TRAIN)
    result = train_autoencoder(
        x, y, config, seed=5, device="cpu", progress=False, checkpoint_path=f"{out}/checkpoint.pt"
    )
    if rank == 0:
        torch.save({"state": result.model.state_dict(), "history": result.history}, f"{out}/trained.pt")
    _finish(rank, out)


@pytest.mark.slow
@pytest.mark.parametrize("combine", TRAINED)
def test_ddp_training_follows_single_process_training(tmp_path, combine):
    _spawn(_train_worker, tmp_path, combine)
    trained = torch.load(tmp_path / "trained.pt")
    rng = np.random.default_rng(0)
    x = rng.random((100, 12), dtype=np.float32)
    y = rng.integers(0, 4, 100)
    name, options = TRAINED[combine]
    single = train_autoencoder(x, y, preset(name, **options, **TRAIN), seed=5, device="cpu", progress=False)
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(trained["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(trained["history"], single.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert (tmp_path / "checkpoint.pt").is_file()


def _structure(value):
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items() if k not in ("environment",)}
    if isinstance(value, list):
        return [_structure(v) for v in value[:1]]
    return type(value).__name__


@pytest.mark.slow
def test_torchrun_snnl_run_writes_the_same_layout(tmp_path):
    common = [
        "run",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--code-dim",
        "8",
        "--kmeans-restarts",
        "1",
        "--projection",
        "none",
        "--quiet",
        "--seeds",
        "0,1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "snnl.cli",
    ]
    done = subprocess.run(
        [*launcher, *common, "--out", str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    single = subprocess.run(
        [sys.executable, "-m", "snnl.cli", *common, "--out", str(tmp_path / "single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr
    a = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    b = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert _structure(a) == _structure(b)
    assert a["environment"]["world_size"] == 2 and b["environment"]["world_size"] == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
    # Same seed, same global batches: the distributed run trains the same model (its epoch
    # losses; the clusters of one k-means restart after one epoch amplify rounding, so their
    # ACC is compared loosely)
    for seed in (0, 1):
        history_a = json.loads((tmp_path / "ddp" / "seeds" / f"seed{seed}.json").read_text())["history"]
        history_b = json.loads((tmp_path / "single" / "seeds" / f"seed{seed}.json").read_text())["history"]
        assert [e["loss"] for e in history_a] == pytest.approx([e["loss"] for e in history_b], rel=1e-4)
    assert a["summary"]["mean"]["acc"] == pytest.approx(b["summary"]["mean"]["acc"], abs=0.05)
    # Resuming the finished distributed run reads it back.
    again = subprocess.run(
        [*launcher, *common, "--out", str(tmp_path / "ddp"), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["summary"] == a["summary"]
    assert Path(tmp_path / "ddp" / "checkpoints" / "seed1.pt").is_file()
