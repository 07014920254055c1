"""Device selection: ``auto`` picks CUDA when available, else the CPU; under torchrun
each rank takes its own GPU (``cuda:LOCAL_RANK``) and the ranks of one command share a
gloo group for barriers and gathers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from ddpm_tools.errors import BadInputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> a usable torch.device, or a clear error.

    Under torchrun, ``auto`` (with a GPU) and ``cuda`` mean this rank's own GPU,
    ``cuda:LOCAL_RANK`` (:func:`rank_device`).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BadInputError(
            f"unknown device {name!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"device {name!r} was requested but this machine has no usable CUDA GPU; "
            "use --device cpu or --device auto"
        )
    if dev.type not in ("cpu", "cuda"):
        raise BadInputError(f"device type {dev.type!r} is not supported; use cpu or cuda")
    if dev.type == "cuda" and dev.index is None and torchrun_ranks() is not None:
        dev = torch.device(rank_device("cuda"))  # under torchrun: this rank's own GPU
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInputError(
                f"torchrun rank with LOCAL_RANK {dev.index} has no GPU of its own (this "
                f"machine has {torch.cuda.device_count()}); start at most that many "
                "processes per node (--nproc-per-node)"
            )
    return dev


# ---------------------------------------------------------------------------------------
# Ranks: torchrun's environment, each rank's device, the gloo group of a command
# ---------------------------------------------------------------------------------------

BARRIER_TIMEOUT = timedelta(days=7)  # torchrun: how long a rank may wait for the others


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among torchrun's processes (one process: 0 of 1)."""

    rank: int  # global rank, RANK
    world: int  # number of processes, WORLD_SIZE
    local: int  # rank on this machine, LOCAL_RANK (picks the GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes merged results and prints."""
        return self.rank == 0


def torchrun_ranks() -> Ranks | None:
    """This process's :class:`Ranks` from torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK), or None when not started by torchrun."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None
    local = os.environ.get("LOCAL_RANK", "")
    return Ranks(rank, world, int(local) if local.isdigit() else rank)


def is_main_process() -> bool:
    """True unless this is a torchrun rank other than 0 (only rank 0 prints)."""
    ranks = torchrun_ranks()
    return ranks is None or ranks.main


def rank_device(device: str) -> str:
    """Under torchrun, ``cuda`` means this rank's own GPU, ``cuda:LOCAL_RANK``; any other
    device (``cpu``, an explicit ``cuda:i``) is used as given."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and local.isdigit():
        return f"cuda:{int(local)}"
    return device


@contextmanager
def rank_group(ranks: Ranks | None) -> Iterator[None]:
    """The gloo process group of a command's ranks, for barriers and gathers of host
    arrays (no tensors cross ranks on the GPU); left alone if the caller made one already
    (a command holds one group from start to end), nothing in one process.

    The timeout is :data:`BARRIER_TIMEOUT`: a rank whose share finishes early waits for
    the slowest one (the default 30 minutes would end long runs with an error).
    """
    import torch.distributed as dist

    started = ranks is not None and ranks.world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ranks.world > 1:
        import torch.distributed as dist

        dist.barrier()
