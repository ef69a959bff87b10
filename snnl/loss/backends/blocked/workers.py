"""Tiles shared out to single-threaded workers, results added in a fixed order.

Why not torch's own threads: every torch operation on a big tile is an
OpenMP parallel region that ends at a barrier, so a pass over the tiles is
hundreds of barriers.  On a busy machine (a data loader, a browser, a CI
neighbour) one of the threads is often descheduled and every barrier waits
for it: the CPU path ran 4-9x slower with one other busy process on two
cores.  Here each worker runs whole tiles with one thread, taking the next
tile when it is done, so a descheduled worker holds up only its own tile and
the others carry on.

Determinism: tiles are numbered in a fixed order and their results are
applied (added into the outputs) strictly in that order, whichever worker
computed them and whenever, so the result does not depend on the schedule
or the number of workers.  At most ``window`` tiles run or wait ahead of the
next one to apply, which bounds the memory of results held back.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

# tiles that may be computed ahead of the next one to apply, per worker
WINDOW_PER_WORKER = 4


class _Pool:
    """``n`` threads whose torch operations run single-threaded."""

    def __init__(self, n: int):
        self.n, self.pid = n, os.getpid()
        self.executor = ThreadPoolExecutor(n, thread_name_prefix="snnl-tiles")
        caller = torch.get_num_threads()
        barrier = threading.Barrier(n)

        def single_threaded():
            # torch sets a new thread's count on its first query: let it,
            # then set this thread's own (OpenMP and MKL keep it per thread)
            torch.get_num_threads()
            torch.set_num_threads(1)
            # subnormal results (exp of logits below -87 in fp32) flushed to 0:
            # x86 computes with them a hundred times slower, and the loss never
            # needs them (rows whose sums are that small are recomputed at
            # their own scale: ``far``).  Per thread: the
            # caller's own setting is left alone
            torch.set_flush_denormal(True)
            barrier.wait()  # one call per thread

        for future in [self.executor.submit(single_threaded) for _ in range(n)]:
            future.result()
        # set_num_threads also moved the default that torch gives threads it
        # has not seen yet: give the caller's back (its own count never changed)
        torch.set_num_threads(caller)


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def shutdown() -> None:
    """Join the worker threads (the next tiles start a new pool): at
    interpreter exit, and before a process group is destroyed
    (``snnl.distributed.destroy``), so that no thread of ours is alive while
    torch's and its libraries' C++ state is torn down."""
    global _pool
    with _pool_lock:
        if _pool is not None and _pool.pid == os.getpid():
            _pool.executor.shutdown(wait=True)
        _pool = None


atexit.register(shutdown)


def _get_pool(n: int) -> _Pool:
    global _pool
    with _pool_lock:
        # a forked child (a DataLoader worker) inherits the object but not its threads
        if _pool is None or _pool.n != n or _pool.pid != os.getpid():
            if _pool is not None and _pool.pid == os.getpid():
                _pool.executor.shutdown(wait=False)  # another thread count: its idle threads end
            _pool = _Pool(n)
        return _pool


@contextmanager
def caller_single_threaded(x: torch.Tensor, tiles: int) -> Iterator[int]:
    """Yields the workers for ``tiles`` tiles of ``x``: torch's thread count on
    the CPU (0 on a GPU, whose work is asynchronous anyway, and for a single
    tile: they run in the caller), and meanwhile runs the calling thread's own
    torch operations single-threaded when there are tiles to share out."""
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or tiles <= 1:
        yield 0
        return
    if threads == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def run_in_order(
    n_tasks: int, compute: Callable[[int], object], apply: Callable[[int, object], None], workers: int | None = None
) -> None:
    """``apply(k, compute(k))`` for k = 0 .. n_tasks - 1, the ``apply`` calls in
    order of k; ``compute`` calls on ``workers`` threads of the pool (default:
    torch's thread count; 0, or a single task: inline in the caller)."""
    threads = torch.get_num_threads() if workers is None else workers
    if threads == 0 or n_tasks <= 1:  # (one task: handing it to a thread would only add the hand-over)
        for k in range(n_tasks):
            apply(k, compute(k))
        return
    workers = min(threads, n_tasks)
    window = WINDOW_PER_WORKER * workers
    ready = threading.Condition()
    state: dict = {"next": 0, "applied": 0, "error": None}
    done: dict[int, object] = {}

    def work():
        while True:
            with ready:
                while (
                    state["error"] is None and state["next"] < n_tasks and (state["next"] - state["applied"] >= window)
                ):
                    ready.wait()
                if state["error"] is not None or state["next"] >= n_tasks:
                    return
                k = state["next"]
                state["next"] += 1
            try:
                result = compute(k)
            except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
                with ready:
                    state["error"] = error
                    ready.notify_all()
                return
            with ready:
                done[k] = result
                try:
                    while state["applied"] in done:
                        apply(state["applied"], done.pop(state["applied"]))
                        state["applied"] += 1
                except BaseException as error:  # noqa: BLE001
                    state["error"] = error
                ready.notify_all()

    pool = _get_pool(threads)
    futures = [pool.executor.submit(work) for _ in range(workers)]
    try:
        for future in futures:
            future.result()
    except BaseException as error:  # Ctrl-C while waiting: the workers stop after their current tile
        with ready:
            state["error"] = error
            ready.notify_all()
        raise
    if state["error"] is not None:
        raise state["error"]
