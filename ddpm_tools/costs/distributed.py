"""``cost-table --shard auto``: the columns t split over torchrun ranks or a Slurm job array.

Under torchrun rank r of W computes :class:`~ddpm_tools.costs.build.Shard` (r, W) (the
columns t = r+1, r+1+W, ...) into its own file ``OUT.rank<r>-of-<W>`` (written every
30 s too, so ``--resume`` continues each rank), the ranks meet at a barrier, and rank 0
merges the files into OUT and deletes them. Every column is computed exactly as one
process computes it (same examples, same noise, same batches), so the merged table
equals the single-process table bit for bit. OUT's folder must be visible to every rank
(a shared file system when the ranks span several machines).

Without torchrun, ``--shard auto`` reads a Slurm job array's SLURM_ARRAY_TASK_ID and
SLURM_ARRAY_TASK_COUNT (task i of n computes shard i/n; ``cost-table merge`` joins
them afterwards).

The set's cached train-split table (behind ``dp:K`` schedules) is built the same way
when a command under torchrun needs it (:func:`cached_cost_table_ranks`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ddpm_tools.costs.build import (
    CostTableRun,
    Shard,
    build_cost_table,
    cache_path,
    cached_cost_table,
    merge_cost_tables,
    set_fingerprint,
)
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import CostTable, read_cost_table
from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.device import Ranks, barrier, rank_group, torchrun_ranks
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.checkpoint_set import CheckpointSet

NEITHER = ("--shard auto needs torchrun (RANK and WORLD_SIZE are not set) or a Slurm job "
           "array (SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set); run it as "
           "torchrun --nproc-per-node N -m ddpm_tools.cli.main cost-table ... --shard auto, "
           "in an sbatch --array job, or pass --shard i/n")


def slurm_shard() -> Shard | None:
    """Task i of a Slurm job array of n tasks as shard i/n (None outside a job array).

    i counts from the array's first task id (SLURM_ARRAY_TASK_MIN), so ``--array=1-8``
    works as well as ``--array=0-7``; arrays with a step (``0-14:2``) are refused.
    """
    task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        return None
    first = os.environ.get("SLURM_ARRAY_TASK_MIN", "0")
    try:
        index, n = int(task) - int(first), int(count)
    except ValueError:
        raise BadInputError(f"SLURM_ARRAY_TASK_ID={task!r}, SLURM_ARRAY_TASK_MIN={first!r} "
                            f"and SLURM_ARRAY_TASK_COUNT={count!r} must be integers; check "
                            "the job's environment or pass --shard i/n") from None
    if not 0 <= index < n:
        raise BadInputError(f"Slurm array task {task} (first {first}) is not one of "
                            f"{n} consecutive tasks; submit with --array=0-{n - 1} or pass "
                            "--shard i/n")
    return Shard(index, n)


def rank_part(out: Path, ranks: Ranks) -> Path:
    """The file of rank r's columns next to OUT: ``OUT.rank<r>-of-<W>``."""
    return out.with_name(f"{out.name}.rank{ranks.rank}-of-{ranks.world}")


def build_cost_table_ranks(cset: CheckpointSet, data: DataSplit, out: str | os.PathLike[str],
                           settings: CostSettings, ranks: Ranks, device: str = "cpu",
                           resume: bool = False, progress: ProgressFn | None = None
                           ) -> CostTableRun:
    """This rank's columns; then rank 0 merges every rank's file into ``out``.

    Rank 0 returns the complete table's run; the other ranks their shard's run
    (``table`` None). See the module docstring.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if ranks.world == 1:
        return build_cost_table(cset, data, out, settings, device=device, resume=resume,
                                progress=progress)
    with rank_group(ranks):
        run = build_cost_table(cset, data, rank_part(out, ranks), settings, device=device,
                               resume=resume, shard=Shard(ranks.rank, ranks.world),
                               progress=progress)
        barrier(ranks)  # every rank's file is complete
        if not ranks.main:
            return run
        parts = [rank_part(out, Ranks(r, ranks.world, r)) for r in range(ranks.world)]
        missing = [str(p) for p in parts if not p.exists()]
        if missing:
            raise BadInputError(f"rank 0 cannot see {missing[0]} written by another rank; "
                                "put --out on a file system every rank shares")
        table = merge_cost_tables(list(parts), out)
        for p in parts:
            p.unlink()
    return CostTableRun(out, table, table.T, table.T, time.perf_counter() - t0)


def build_sharded(cset: CheckpointSet, data: DataSplit, out: str | os.PathLike[str],
                   settings: CostSettings, shard: str | None = None, device: str = "cpu",
                   resume: bool = False, progress: ProgressFn | None = None) -> CostTableRun:
    """``cost-table`` with its ``--shard`` text: None (the whole table; refused under
    torchrun with several ranks, which would each compute all of it), ``i/n`` (one
    shard, :func:`~ddpm_tools.costs.build.build_cost_table`) or ``auto`` (torchrun
    ranks, else the Slurm array task, else a BadInputError)."""
    ranks = torchrun_ranks()
    if shard is None and ranks is not None and ranks.world > 1:
        raise BadInputError("cost-table runs under torchrun without --shard auto: every rank "
                            "would compute the whole table; add --shard auto to split the "
                            "columns over the ranks")
    if shard is None or shard.strip() != "auto":
        return build_cost_table(cset, data, out, settings, device=device, resume=resume,
                                shard=Shard.parse(shard) if shard else None, progress=progress)
    if ranks is not None:
        return build_cost_table_ranks(cset, data, out, settings, ranks, device=device,
                                      resume=resume, progress=progress)
    task = slurm_shard()
    if task is None:
        raise BadInputError(NEITHER)
    return build_cost_table(cset, data, out, settings, device=device, resume=resume,
                            shard=task, progress=progress)


def cached_cost_table_ranks(cset: CheckpointSet, data: str, split: str = "train",
                            settings: CostSettings = CostSettings(), device: str = "cpu",
                            progress: ProgressFn | None = None) -> tuple[CostTable, Path]:
    """:func:`~ddpm_tools.costs.build.cached_cost_table`; under torchrun every rank calls
    it together and, when the cache must be built, computes its share of the columns
    (rank 0 merges) instead of each rank building the whole table."""
    ranks = torchrun_ranks()
    if ranks is None or ranks.world == 1:
        return cached_cost_table(cset, data, split, settings, device=device,
                                 progress=progress)
    path = cache_path(cset, data, split, settings)
    with rank_group(ranks):
        if not path.exists() or read_cost_table(path).set_sha256 != set_fingerprint(cset):
            build_cost_table_ranks(cset, load_data(data, split, seed=settings.seed), path,
                                   settings, ranks, device=device, resume=True,
                                   progress=progress)
            barrier(ranks)  # rank 0 has merged the table into the cache
    return read_cost_table(path), path
