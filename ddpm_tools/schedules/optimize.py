"""The DP driver: the exact schedules of a cost table for one or many budgets, each next
to the even and quadratic strides on the same table (Watson et al. 2021, Sec. 3).

:mod:`ddpm_tools.core.dp` holds the DP itself (pure arrays); this module turns a
:class:`~ddpm_tools.costs.table_file.CostTable` into :class:`Schedule` values with their
predicted bits/dim and provenance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ddpm_tools.core.dp import DPSolution, solve_all_budgets, solve_schedules, solve_some, warm_up
from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.core.strides import even_stride, quadratic_stride
from ddpm_tools.costs.table_file import CostTable, predicted_bpd
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn
from ddpm_tools.schedules.schedule_file import Schedule


@dataclass(frozen=True, eq=False)
class BudgetResult:
    """The DP schedule of one budget next to the two strides, all from one table."""

    schedule: Schedule  # the DP's schedule (method "dp"); .budget, .timesteps, .predicted_bpd
    predicted_nats: float  # its negative ELBO, nats per example
    even_bpd: float | None  # even stride's bits/dim; None if it does not exist or is +inf
    quadratic_bpd: float | None  # quadratic stride's bits/dim; None likewise
    untruncated_bpd: float | None = None  # truncate: best schedule starting at T (bits/dim)
    untruncated_timesteps: np.ndarray | None = None  # truncate: that schedule, [K+1] int64

    @property
    def start(self) -> int:
        """tau_K, where the DP's schedule starts (T unless a truncated prior won)."""
        return int(self.schedule.timesteps[-1])


@dataclass(frozen=True, eq=False)
class OptimizeResult:
    """What ``optimize-schedule`` reports for one table."""

    T: int  # diffusion steps of the table
    dims: int  # D, for bits/dim
    solve_seconds: float  # wall time of the DP alone (forward pass and back-tracking)
    results: list[BudgetResult]  # one per budget, in the order asked (or 1..K_max)
    truncate: bool = False  # the DP could start wherever the table has a prior


def standard_prior(prior: np.ndarray) -> np.ndarray:
    """``prior`` [T+1] with every entry but the standard prior at T set to +inf, so that
    the DP only considers untruncated schedules (tau_K = T)."""
    out = np.full_like(prior, np.inf)
    out[-1] = prior[-1]
    return out


def optimize_table(
    table: CostTable, budgets: Sequence[int] | None, *, truncate: bool = False,
    source: dict[str, str | int | float] | None = None, progress: ProgressFn | None = None,
) -> OptimizeResult:
    """Exact DP schedules for ``budgets`` (None: every budget with a finite path), each
    compared with the even and quadratic strides on the same table.

    Without ``truncate`` every schedule starts at T from N(0, I) (priors at other t are
    ignored). With ``truncate`` the DP picks the start too, among all t with a finite
    prior (auxiliary priors, Franzese et al. 2023), and each result also carries the
    best untruncated schedule of the same budget. ``source`` is recorded in each
    schedule (with the table's set_sha256, data, split, n_samples, seed and variance
    when known).
    """
    T = table.T
    if not truncate and not math.isfinite(table.prior[T]):
        aux = np.flatnonzero(np.isfinite(table.prior)).tolist()
        raise BadInputError(f"the cost table has no standard prior at T = {T}, only priors at "
                            f"t = {aux}; pass --truncate to let the schedule start there")
    prior = table.prior if truncate else standard_prior(table.prior)
    warm_up()  # numba cache load or first compile: not part of solve_seconds
    start = time.perf_counter()
    if budgets is None:
        sols = solve_all_budgets(table.L, prior, progress=progress)
    else:
        sols = solve_schedules(table.L, prior, budgets, progress=progress)
    solve_seconds = time.perf_counter() - start
    untruncated = (_untruncated(table, [s.budget for s in sols])
                   if truncate and math.isfinite(table.prior[T]) else {})
    src: dict[str, str | int | float] = dict(source or {})
    for key in ("set_sha256", "data", "split", "n_samples", "seed", "variance"):
        value = getattr(table, key)
        if value is not None:
            src.setdefault(key, value)
    results = []
    for sol in sols:
        bpd = float(nats_to_bpd(sol.cost_nats, table.dims))
        schedule = Schedule(table.T, sol.budget, sol.timesteps, bpd, "dp", src)
        std = untruncated.get(sol.budget)
        results.append(BudgetResult(
            schedule, sol.cost_nats,
            _stride_bpd(table, even_stride, sol.budget),
            _stride_bpd(table, quadratic_stride, sol.budget),
            None if std is None else float(nats_to_bpd(std.cost_nats, table.dims)),
            None if std is None else std.timesteps,
        ))
    return OptimizeResult(table.T, table.dims, solve_seconds, results, truncate)


def _untruncated(table: CostTable, budgets: list[int]) -> dict[int, DPSolution]:
    """The best schedule starting at T for each budget that has one (finite cost)."""
    return {s.budget: s for s in solve_some(table.L, standard_prior(table.prior), budgets)}


def _stride_bpd(
    table: CostTable, stride: Callable[[int, int], np.ndarray], K: int
) -> float | None:
    """Bits/dim of a stride, None where it does not exist (K > T) or costs +inf."""
    if K > table.T:
        return None
    bpd = predicted_bpd(table, stride(table.T, K))
    return bpd if math.isfinite(bpd) else None
