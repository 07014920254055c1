"""``optimize-schedule`` as one call: the table (given, or the set's cached train-split
table), the exact DP for each budget, the schedule files and the frontier plot.

:func:`optimize_schedules` checks the option combination first, so that a bad
combination fails before anything is built, then loads the set once (with ``set_dir``)
and optimizes the very table it built or read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddpm_tools.costs.build import cached_cost_table
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import read_cost_table
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import ensure_writable_dir, sha256_file
from ddpm_tools.io.plots import check_plot_target, frontier_png
from ddpm_tools.progress import ProgressFn
from ddpm_tools.schedules.optimize import OptimizeResult, optimize_table
from ddpm_tools.schedules.schedule_file import write_schedule
from ddpm_tools.sets.load import load_set


@dataclass(frozen=True, eq=False)
class ScheduleRun:
    """What one ``optimize-schedule`` run produced."""

    result: OptimizeResult  # the DP schedules next to the strides, one per budget
    costs: Path  # the cost table they were optimized on
    written: list[Path]  # schedule files written (schedule_K{budget}.json), in budget order
    plot: Path | None  # the frontier plot written, if asked for


def _check_options(costs: Path | None, set_dir: Path | None, data: str | None,
                   budgets: Sequence[int], all_budgets: bool) -> None:
    """One sentence for each option combination optimize-schedule cannot run."""
    if (set_dir is None) != (data is None):
        raise BadInputError("--set and --data go together: the table is built from the set "
                            "on that data")
    if (costs is None) == (set_dir is None):
        raise BadInputError("pass either --costs FILE (written by cost-table) or --set DIR "
                            "--data NAME, exactly one of the two")
    if all_budgets == bool(budgets):
        raise BadInputError(
            "give either --budget K (repeatable) or --all-budgets, exactly one of the two"
        )


def optimize_schedules(
    budgets: Sequence[int] = (), *, all_budgets: bool = False, costs: Path | None = None,
    set_dir: Path | None = None, data: str | None = None,
    settings: CostSettings = CostSettings(), truncate: bool = False, out: Path | None = None,
    plot: Path | None = None, device: str = "cpu",
    progress: ProgressFn | None = None,
) -> ScheduleRun:
    """Exact DP schedules for ``budgets`` (or, with ``all_budgets``, for every budget with
    a finite path; exactly one of the two) on the table ``costs``, or on the train-split
    table of ``set_dir`` on ``data`` (built with ``settings`` and cached next to the set
    when missing or stale).

    Writes ``out/schedule_K{budget}.json`` per budget when ``out`` is given and the
    predicted bits/dim against K (DP, even, quadratic) to ``plot`` when given. Repeated
    budgets are solved once, in the order first given.
    """
    _check_options(costs, set_dir, data, budgets, all_budgets)
    if out is not None:
        ensure_writable_dir(out)
    if plot is not None:
        check_plot_target(plot)
    if costs is None:
        assert set_dir is not None and data is not None  # checked by _check_options
        table, costs = cached_cost_table(load_set(set_dir), data, "train", settings,
                                         device=device, progress=progress)
    else:
        table = read_cost_table(costs)
    source: dict[str, str | int | float] = {"costs": str(costs),
                                            "costs_sha256": sha256_file(costs)}
    unique = None if all_budgets else list(dict.fromkeys(budgets))  # in the order given
    result = optimize_table(table, unique, truncate=truncate, source=source,
                            progress=progress)
    written: list[Path] = []
    if out is not None:
        for r in result.results:
            written.append(out / f"schedule_K{r.schedule.budget}.json")
            write_schedule(written[-1], r.schedule)
    if plot is not None:
        _plot_frontier(result, plot)
    return ScheduleRun(result, costs, written, plot)


def _plot_frontier(result: OptimizeResult, plot: Path) -> None:
    """Predicted bits/dim against K for the DP and the two strides."""
    ks = [r.schedule.budget for r in result.results]
    frontier_png(plot, ks, {"DP (optimal)": [r.schedule.predicted_bpd for r in result.results],
                            "even stride": [r.even_bpd for r in result.results],
                            "quadratic stride": [r.quadratic_bpd for r in result.results]},
                 title=f"T = {result.T}")
