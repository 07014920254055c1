"""``cost-table`` as one call: check the options, load the set and the data split, and
build (or resume, or shard) the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ddpm_tools.costs.build import CostTableRun, merge_cost_tables
from ddpm_tools.costs.distributed import build_sharded
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.summary import TableSummary, summarize_table
from ddpm_tools.data import load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.load import load_set


@dataclass(frozen=True, eq=False)
class CostTableReport:
    """A cost-table run and the headline numbers of the table it completed."""

    run: CostTableRun  # what was written and how long it took
    summary: TableSummary | None  # the complete table's numbers (None for a shard)


def run_cost_table(
    set_dir: Path | None, data: str | None, out: Path | None, *, split: str = "train",
    settings: CostSettings = CostSettings(), device: str = "cpu", resume: bool = False,
    shard: str | None = None, progress: ProgressFn | None = None,
) -> CostTableReport:
    """The cost table of the set at ``set_dir`` on ``data``'s ``split``, written to ``out``
    (:func:`ddpm_tools.costs.distributed.build_sharded`); ``shard`` is ``"i/n"``, ``"auto"``
    (torchrun ranks or a Slurm array task) or None.

    The three paths are optional only so that the command line can say in one sentence
    which of them is missing.
    """
    missing = [n for n, v in (("--set", set_dir), ("--data", data), ("--out", out)) if v is None]
    if set_dir is None or data is None or out is None:
        raise BadInputError(f"cost-table needs {', '.join(missing)}; see ddpm-tools cost-table "
                            "--help")
    cset = load_set(set_dir)
    split_data = load_data(data, split, seed=settings.seed)
    run = build_sharded(cset, split_data, out, settings, shard, device=device, resume=resume,
                        progress=progress)
    return CostTableReport(run, None if run.table is None else summarize_table(run.table))


def merge_shards(shards: list[str | os.PathLike[str]], out: str | os.PathLike[str]
                 ) -> TableSummary:
    """:func:`ddpm_tools.costs.build.merge_cost_tables` and the merged table's numbers."""
    return summarize_table(merge_cost_tables(shards, out))
