"""Schedules named on the command line: ``FILE``, ``dp:K``, ``dp-truncated:K``, ``even:K``,
``quadratic:K``, ``full``.

``dp:K`` runs the exact DP on the set's cached train-split cost table (built first if
needed), so a schedule is never chosen on the data it is scored on; it always starts at
T. ``dp-truncated:K`` lets the DP also choose the start among the set's auxiliary
priors (``train-prior``; the table's prior column), as ``optimize-schedule --truncate``
does. A schedule file may start below T too (sample and eval-bpd then need a prior there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_tools.core.dp import solve_schedules
from ddpm_tools.core.strides import check_timesteps, even_stride, quadratic_stride
from ddpm_tools.costs.build import set_fingerprint
from ddpm_tools.costs.distributed import cached_cost_table_ranks
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import CostTable, read_cost_table
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn
from ddpm_tools.schedules.optimize import standard_prior
from ddpm_tools.schedules.schedule_file import read_schedule
from ddpm_tools.sets.checkpoint_set import CheckpointSet

SPEC_HELP = ("A schedule JSON file, dp:K (exact DP on the set's train-split cost table), "
             "dp-truncated:K (the DP may also start below T where the set has an auxiliary "
             "prior), even:K, quadratic:K or full (all T steps).")


@dataclass(frozen=True)
class CostSource:
    """Which cost table ``dp:K`` uses: the set's, fitted on the train split."""

    data: str  # data spec of the set
    settings: CostSettings  # examples and seed of the table
    device: str = "cpu"  # where the table is built if it is not cached yet
    table: Path | None = None  # an existing table to use instead of the set's cached one


def _table_for(cset: CheckpointSet, costs: CostSource,
               progress: ProgressFn | None) -> CostTable:
    """The train-split table behind ``dp:K``: the given file (checked) or the set's cache."""
    if costs.table is None:
        return cached_cost_table_ranks(cset, costs.data, "train", costs.settings,
                                       device=costs.device, progress=progress)[0]
    table = read_cost_table(costs.table)
    T = cset.T
    where = f"cost table {costs.table}"
    if table.T != T:
        raise BadInputError(f"{where} has T = {table.T} but the set has T = {T}; build the "
                            "table from this set with cost-table")
    if table.set_sha256 and table.set_sha256 != set_fingerprint(cset):
        raise BadInputError(f"{where} was measured on another set (or other weights or priors); "
                            "rebuild it with cost-table --set " + str(cset.path))
    if table.split not in (None, "train"):
        raise BadInputError(f"{where} was fitted on the {table.split} split; dp:K must be "
                            "chosen on a train-split table so that it is scored on unseen data")
    return table


def resolve_schedule(spec: str, cset: CheckpointSet, costs: CostSource,
                     progress: ProgressFn | None = None) -> tuple[str, np.ndarray]:
    """(label, timesteps [K+1]) for one ``--schedule`` value of the loaded set ``cset``."""
    spec = spec.strip()
    T = cset.T
    if spec == "full":
        return "full", np.arange(T + 1, dtype=np.int64)
    m = re.fullmatch(r"(dp|dp-truncated|even|quadratic):(\d+)", spec)
    if m:
        kind, K = m.group(1), int(m.group(2))
        if not 1 <= K <= T:
            raise BadInputError(f"--schedule {spec}: the budget must be between 1 and T = {T}")
        if kind == "even":
            return spec, even_stride(T, K)
        if kind == "quadratic":
            return spec, quadratic_stride(T, K)
        table = _table_for(cset, costs, progress)
        prior = table.prior if kind == "dp-truncated" else standard_prior(table.prior)
        return spec, solve_schedules(table.L, prior, [K])[0].timesteps
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"--schedule {spec!r} is neither a file nor one of dp:K, "
                            "dp-truncated:K, even:K, quadratic:K, full")
    sched = read_schedule(path)
    if sched.T != T:
        raise BadInputError(f"schedule {path} is for T = {sched.T} but the set has T = {T}; "
                            "optimize a schedule for this set")
    return path.name, check_timesteps(sched.timesteps, T, truncated_ok=True)
