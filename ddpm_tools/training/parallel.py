"""Training every member of a set: worker processes on one machine, or torchrun ranks.

Members are independent (Haxholli & Lorenzi 2023), so ``train_set`` spreads them
over ``workers`` processes (each with its share of the CPU threads); under torchrun,
:func:`torchrun_members` gives rank r the members r, r + W, r + 2W, ...
The members of a multidecoder set share their encoder: they train jointly, in one
process (:mod:`ddpm_tools.training.joint`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ddpm_tools.data import load_data
from ddpm_tools.device import Ranks, barrier, rank_device, rank_group, torchrun_ranks
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.manifest import read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.joint import train_multidecoder, trains_jointly
from ddpm_tools.training.trainer import MemberResult, train_member

# Modules the fork server imports once, so that each worker forked from it starts with
# them in memory: torch, the trainer, the data loaders, and torch._dynamo (which
# torch.optim imports when the first optimizer is made: about 2 s per process).
# "__main__" too: the server then imports the parent's main script (a script's code
# under its __main__ guard does not run) and the workers inherit it instead of each
# running it again.
_PRELOAD = ["__main__", "ddpm_tools.training.trainer", "ddpm_tools.data", "torch._dynamo"]

_events: Any = None  # in a worker: the queue that carries progress back to the parent
_ordinal = 0  # in a worker: its number among the run's workers (0, 1, ...)
_stop: Any = None  # in a worker: set by the parent when the run must end early


class _Stopped(Exception):
    """Raised inside a worker's training when the parent stops the run."""


def _worker_context() -> Any:
    """Worker processes forked from a server that imported torch and the trainer once
    (cheap start-up, and safe: the server never ran a parallel region); spawn where the
    platform has no forkserver."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def _worker_init(threads: int, events: Any, tickets: Any, stop: Any) -> None:
    global _events, _ordinal, _stop
    # Ctrl-C reaches every process of the terminal's group; the parent alone handles it
    # and stops the workers through ``stop``, so that none is left training
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _events, _stop = events, stop
    with tickets.get_lock():
        _ordinal = tickets.value
        tickets.value += 1


def worker_device(device: str, ordinal: int, gpus: int) -> str:
    """The device of worker ``ordinal``: with ``cuda`` and several GPUs the workers take
    them in turn (worker k uses ``cuda:k mod gpus``); any other device as given."""
    if device == "cuda" and gpus > 1:
        return f"cuda:{ordinal % gpus}"
    return device


def _worker_progress(task: str, done: int, total: int, **info: float) -> None:
    if _stop.is_set():  # checked every 10 steps: the run ends at most 10 steps later
        raise _Stopped(task)
    _events.put((task, done, total, info))


def _worker_train(set_dir: str, index: int, steps: int | None, device: str) -> MemberResult:
    """Runs in a worker process; progress events go back through the queue."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    return train_member(set_dir, index, steps=steps, device=worker_device(device, _ordinal, gpus),
                        progress=_worker_progress)


def _relay(events: Any, progress: ProgressFn | None, done: Callable[[], bool]) -> None:
    """Pass the workers' progress events on to ``progress`` until the queue is empty and
    ``done()`` says no more will come."""
    while True:
        try:
            task, n, total, info = events.get(timeout=0.1)
        except queue.Empty:
            if done():
                return
            continue
        if progress is not None:
            progress(task, n, total, **info)


def train_set(set_dir: str | os.PathLike[str], workers: int = 1, steps: int | None = None,
              device: str = "cpu", progress: ProgressFn | None = None,
              members: list[int] | None = None) -> list[MemberResult]:
    """Train ``members`` (default: all) of the set, ``workers`` at a time.

    ``workers = 1`` trains in this process. More workers use fresh processes, each
    with ``cpu_count // workers`` torch threads (and with ``device="cuda"`` on several
    GPUs, its own GPU in turn: :func:`worker_device`); members are handed out as workers
    free up. Already trained members are skipped; interrupted ones resume. A multidecoder
    set trains jointly in this process (``workers`` unused). The workers import the
    caller's main module (as multiprocessing does): call this from a script under
    ``if __name__ == "__main__":``.
    """
    set_dir = Path(set_dir)
    man = read_manifest(set_dir)
    todo = list(range(len(man.members))) if members is None else members
    if workers < 1:
        raise BadInputError("--workers must be at least 1")
    if man.shared_encoder is not None:
        if sorted(todo) != list(range(len(man.members))):
            raise BadInputError(trains_jointly(set_dir))
        return train_multidecoder(set_dir, steps=steps, device=device, progress=progress)
    if workers == 1 or len(todo) == 1:
        cfg = TrainConfig.from_json(man.training)
        data = load_data(man.data.name, "train", seed=cfg.seed)
        return [train_member(set_dir, i, steps=steps, device=device, progress=progress,
                             data=data) for i in todo]
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = _worker_context()
    events = ctx.Queue()  # handed to each worker at its start (initargs)
    tickets = ctx.Value("i", 0)  # numbers the workers, to spread them over GPUs
    stop_workers = ctx.Event()
    done = threading.Event()
    pump = threading.Thread(target=_relay, args=(events, progress, done.is_set), daemon=True)
    pump.start()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                               initializer=_worker_init,
                               initargs=(threads, events, tickets, stop_workers))
    try:
        futures = [pool.submit(_worker_train, str(set_dir), i, steps, device) for i in todo]
        for f in as_completed(futures):  # the first failure ends the wait at once
            f.result()
        results = [f.result() for f in futures]
    except BaseException:  # Ctrl-C or a failed member: stop the others, then report
        stop_workers.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        done.set()
        pump.join()
    _relay(events, progress, lambda: True)  # the workers have exited: what they sent last
    events.close()
    return results


def torchrun_members(n_members: int) -> tuple[Ranks, list[int]]:
    """(this rank, its members r, r+W, ...) from torchrun's environment."""
    ranks = torchrun_ranks()
    if ranks is None:
        raise BadInputError(
            "--member auto needs torchrun (RANK and WORLD_SIZE are not set); run it as "
            "torchrun --nproc-per-node N -m ddpm_tools.cli.main train-interval --member auto, "
            "or pass a member index"
        )
    return ranks, list(range(ranks.rank, n_members, ranks.world))


def torchrun_train(set_dir: str | os.PathLike[str], steps: int | None, device: str,
                   progress: ProgressFn | None = None) -> tuple[int, list[MemberResult]]:
    """Train this rank's members, wait for every rank, and let rank 0 check the set.

    Returns (rank, results). The ranks share a gloo group for the barrier only (no
    gradients cross ranks: members are independent), see
    :func:`ddpm_tools.device.rank_group`. With ``device = "cuda"`` each rank uses its own
    GPU (:func:`ddpm_tools.device.rank_device`).
    """
    man = read_manifest(set_dir)
    ranks, mine = torchrun_members(len(man.members))
    with rank_group(ranks):
        results = train_set(set_dir, workers=1, steps=steps, device=rank_device(device),
                            progress=progress, members=mine) if mine else []
        barrier(ranks)
        if ranks.main:
            final = read_manifest(set_dir)
            missing = [m.index for m in final.members if m.sha256 is None]
            if missing:
                raise CheckpointError(f"after all ranks finished, members {missing} of "
                                      f"{set_dir} have no weights; rerun train-interval")
    return ranks.rank, results
