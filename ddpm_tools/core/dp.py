"""The exact dynamic program over a KL cost table (Watson et al. 2021, Sec. 3).

The negative ELBO of a K-step schedule 0 = tau_0 < tau_1 < ... < tau_K is

    prior[tau_K] + sum_{i=1..K} L[tau_{i-1}, tau_i]

with ``L[s, t]`` the expected cost in nats of the step t -> s (row s = 0 is the decoder)
and ``prior[t]`` the cost of starting the chain at t (+inf where no prior exists). One
forward pass (``kernels.dp_relax_rows``) answers every budget K up to the largest one
asked for; ties go to the smallest s at every step and to the smallest start t.

Only entries with s < t are read: L[s, t] for s >= t may hold anything. +inf entries
are steps that cannot be taken. NaN and -inf in the used part are input errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from ddpm_tools.core import backtrack, kernels, table_scan
from ddpm_tools.core.strides import check_timesteps
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn, report

ROW_CHUNK = kernels.DP_BLOCK  # source rows per kernel call (one progress report)
HINTS_FRACTION = 32  # hints once back-tracking would cost > 1/32 of the forward pass
RESOLVE_FRACTION = 4  # exact hints once the steps are more than 1/4 of the states
PARALLEL_MIN_T = 256  # below this T the threads' meetings cost more than they save


@dataclass(frozen=True, eq=False)
class DPSolution:
    """The least-cost schedule with exactly ``budget`` steps."""

    budget: int  # K, the number of steps (network calls)
    timesteps: np.ndarray  # [K+1] int64, 0 = tau_0 < ... < tau_K
    cost_nats: float  # prior[tau_K] + sum_i L[tau_{i-1}, tau_i], nats per example


def check_table(L: np.ndarray, prior: np.ndarray, where: str = "the cost table") -> int:
    """Validate a cost table and return the most steps any finite-cost schedule can take.

    L: [T+1, T+1] float64, prior: [T+1] float64. Raises BadInputError (naming ``where``)
    for a bad shape, NaN or -inf in L[s, t] with s < t or in prior, or when no schedule
    has finite cost. Returns K_max: the largest K such that some path 0 -> t of K finite
    steps ends at a t with finite prior.
    """
    return _validated(L, prior, where)[2]


def _validated(
    L: np.ndarray, prior: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """(L, prior) as C-contiguous float64 after every check of check_table, and K_max."""
    L, prior = _as_arrays(L, prior, where)
    reach = np.empty(L.shape[0], dtype=np.int64)
    s, t = table_scan.scan_table(L, reach)
    if s >= 0:
        raise BadInputError(
            f"{where} has {L[s, t]} at L[{s}, {t}] (step {t} -> {s}); every used entry "
            "(s < t) must be a number or +inf, so rebuild the table"
        )
    bad = np.flatnonzero(np.isnan(prior) | (prior == -np.inf))
    if bad.size:
        raise BadInputError(
            f"{where} has {prior[bad[0]]} at prior[{bad[0]}]; the prior must be a number "
            "or +inf (no prior at that t), so rebuild the table"
        )
    ok = np.isfinite(prior) & (reach >= 0)
    if not ok[1:].any():
        raise BadInputError(
            f"{where} admits no schedule of finite cost: no path of finite steps from 0 "
            "reaches a t with a finite prior; check the table's +inf entries"
        )
    return L, prior, int(reach[1:][ok[1:]].max())


def _as_arrays(L: np.ndarray, prior: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """L and prior as C-contiguous float64, with shapes [T+1, T+1] and [T+1], T >= 1."""
    L = np.ascontiguousarray(L, dtype=np.float64)
    prior = np.ascontiguousarray(prior, dtype=np.float64)
    if L.ndim != 2 or L.shape[0] != L.shape[1] or L.shape[0] < 2:
        raise BadInputError(
            f"{where} has L of shape {L.shape}; it must be square [T+1, T+1] with T >= 1"
        )
    if prior.shape != (L.shape[0],):
        raise BadInputError(
            f"{where} has prior of shape {prior.shape} but L of shape {L.shape}; the prior "
            f"must have T+1 = {L.shape[0]} entries"
        )
    return L, prior


def _check_budgets(budgets: Sequence[int], k_max: int, where: str) -> np.ndarray:
    """Budgets as int64, each in [1, k_max], else one clear sentence."""
    if len(budgets) == 0:
        raise BadInputError("no budget given; pass at least one budget K >= 1")
    out = np.empty(len(budgets), dtype=np.int64)
    for i, K in enumerate(budgets):
        if int(K) != K:
            raise BadInputError(f"budget {K!r} is not an integer; pass whole step counts")
        if not 1 <= K <= k_max:
            raise BadInputError(
                f"budget {K} is outside 1..{k_max}: {where} allows at most {k_max} steps "
                f"on a finite-cost path; choose a budget between 1 and {k_max}"
            )
        out[i] = int(K)
    return out


def _bp_dtype(T: int) -> type[np.signedinteger]:
    """Smallest integer type holding every s in [0, T-1]."""
    return np.int16 if T - 1 <= np.iinfo(np.int16).max else np.int32


def _want_hints(budgets: np.ndarray, T: int) -> bool:
    """Whether back-tracking these budgets needs the forward pass's hints. Without them a
    step reads up to T rows (:func:`kernels.dp_argmin`), so the back-tracking costs up to
    T * sum(budgets) additions against the forward pass's about max(budgets) * T^2 / 2.
    Hints make the forward pass about a third slower, so they are kept only when the
    budgets add up to more than max(budgets) * T / ``HINTS_FRACTION`` (one budget: only
    for T < 32; every budget at once: always)."""
    return int(budgets.sum()) * HINTS_FRACTION > int(budgets.max()) * T


def _aligned_rows(rows: int, n: int, dtype: type[np.generic], fill: float) -> np.ndarray:
    """A [rows, w] array filled with ``fill``, w = n rounded up to ``kernels.DP_ALIGN``, its
    first entry on a 64-byte boundary: the kernels' vectors of targets from a multiple of
    ``DP_ALIGN`` (16 float64 or int16) then never straddle two cache lines (on x86 such
    loads and stores cost double). Columns from n on are padding the kernels never read."""
    w = -(-n // kernels.DP_ALIGN) * kernels.DP_ALIGN
    size = np.dtype(dtype).itemsize
    buf = np.empty(rows * w + 64 // size, dtype=dtype)
    start = (-buf.ctypes.data % 64) // size
    out = buf[start : start + rows * w].reshape(rows, w)
    kernels.dp_fill(out, fill)
    return out


def _want_exact(budgets: np.ndarray, K: int, T: int) -> bool:
    """Whether to make every hint exact before back-tracking (``backtrack.dp_resolve_hints``,
    one pass over the K * T - K^2 / 2 states; K = 0: no hints). Measured at T = 4000 on 2
    cores: 9 ns per state for the pass, then 8 ns per step instead of 43; so only when the
    steps, sum(budgets), are more than the states / ``RESOLVE_FRACTION``."""
    states = K * (T + 1) - K * (K + 1) // 2
    return K > 0 and int(budgets.sum()) * RESOLVE_FRACTION > states


def _forward(
    L: np.ndarray, K: int, hints: bool, progress: ProgressFn | None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the forward pass for budgets up to K. Returns C: [K+1, w] and the back-pointer
    hints bp: [K+1, w] (``hints``) or [0, 0], with w >= T+1 (:func:`_aligned_rows`).

    On more than one numba thread (``NUMBA_NUM_THREADS``, default: every core) and for
    T >= ``PARALLEL_MIN_T`` the column blocks are spread over the threads; the result is
    the same bit for bit.
    """
    n = L.shape[0]
    C = _aligned_rows(K + 1, n, np.float64, np.inf)
    C[0, 0] = 0.0
    bp = _aligned_rows(K + 1 if hints else 0, n if hints else 0, _bp_dtype(n - 1), 0)
    threads = numba.get_num_threads()
    for s_lo in range(0, n - 1, ROW_CHUNK):
        s_hi = min(s_lo + ROW_CHUNK, n - 1)
        if threads > 1 and n - 1 >= PARALLEL_MIN_T:
            kernels.dp_relax_rows_parallel(L, C, bp, s_lo, s_hi, kernels.DP_BLOCK, threads,
                                           s_lo > 0)
        else:
            kernels.dp_relax_rows(L, C, bp, s_lo, s_hi, kernels.DP_BLOCK)
        report(progress, "dynamic program", s_hi, n - 1)
    return C, bp


def _solve(
    L: np.ndarray, prior: np.ndarray, budgets: np.ndarray, strict: bool,
    progress: ProgressFn | None,
) -> list[DPSolution]:
    """Forward pass up to max(budgets), best starts, back-tracking; see solve_schedules."""
    uniq = np.unique(budgets)
    C, bp = _forward(L, int(uniq[-1]), _want_hints(uniq, L.shape[0] - 1), progress)
    ends = np.empty(uniq.size, dtype=np.int64)
    costs = np.empty(uniq.size, dtype=np.float64)
    backtrack.dp_best_ends(C, prior, uniq, ends, costs)
    if strict and (ends < 0).any():
        K = int(uniq[np.flatnonzero(ends < 0)[0]])
        raise BadInputError(
            f"no schedule with exactly {K} steps has finite cost in this table (its +inf "
            "entries rule every such path out); choose another budget"
        )
    ok = ends >= 0
    ks, ends, costs = uniq[ok], ends[ok], costs[ok]
    offsets = np.zeros(ks.size, dtype=np.int64)
    np.cumsum(ks[:-1] + 1, out=offsets[1:])
    paths = np.empty(int((ks + 1).sum()), dtype=np.int64)  # every schedule, end to end
    exact = _want_exact(ks, bp.shape[0] - 1, L.shape[0] - 1)
    if exact:
        backtrack.dp_resolve_hints(L, C, bp, bp.shape[0] - 1)
    backtrack.dp_backtrack(L, C, bp, ks, ends, offsets, paths, exact)
    found = {
        int(K): DPSolution(int(K), paths[o : o + K + 1], float(c))
        for K, o, c in zip(ks, offsets, costs, strict=True)
    }
    return [found[int(K)] for K in budgets if int(K) in found]


def solve_schedules(
    L: np.ndarray, prior: np.ndarray, budgets: Sequence[int], *,
    progress: ProgressFn | None = None,
) -> list[DPSolution]:
    """The least-cost schedule with exactly K steps, for every K in ``budgets``.

    Minimizes prior[tau_K] + sum_i L[tau_{i-1}, tau_i] over 0 = tau_0 < ... < tau_K
    (Watson et al. 2021, Sec. 3) with one forward pass up to max(budgets).
    L: [T+1, T+1] float64 (entries s >= t ignored; +inf = step not allowed);
    prior: [T+1] float64 (+inf where no prior; finite at several t lets the DP pick the
    start). Returns one DPSolution per entry of ``budgets``, in the order given.
    Ties: the smallest s at every step, then the smallest start t.
    Time O(T^2 * K), spread over numba's threads (``NUMBA_NUM_THREADS``); memory one
    [K+1, T+1] float64 state, plus int16 back-pointer hints when many budgets are asked
    for (1.25x the size of L when solving every budget at once, and the solutions
    themselves: T^2/2 int64 timesteps, 0.5x L, for every budget; the solutions' timesteps
    are views of one array); back-tracking reads L, C and the hints
    (``kernels.dp_argmin``, ``backtrack.dp_backtrack``).
    """
    L, prior, k_max = _validated(L, prior, "the cost table")
    ks = _check_budgets(budgets, k_max, "the cost table")
    return _solve(L, prior, ks, True, progress)


def solve_all_budgets(
    L: np.ndarray, prior: np.ndarray, *, progress: ProgressFn | None = None
) -> list[DPSolution]:
    """:func:`solve_schedules` for every budget 1..K_max that has a finite-cost path."""
    L, prior, k_max = _validated(L, prior, "the cost table")
    ks = np.arange(1, k_max + 1, dtype=np.int64)
    return _solve(L, prior, ks, False, progress)


def solve_some(L: np.ndarray, prior: np.ndarray, budgets: Sequence[int]) -> list[DPSolution]:
    """:func:`solve_schedules` without the errors: the solutions of those ``budgets`` that
    have a finite-cost path (none if no path reaches a finite prior), in the order given."""
    try:
        L, prior, k_max = _validated(L, prior, "the cost table")
    except BadInputError:  # no finite path reaches a finite prior at all
        return []
    ks = np.asarray([K for K in budgets if 1 <= K <= k_max], dtype=np.int64)
    return _solve(L, prior, ks, False, None) if ks.size else []


def warm_up() -> None:
    """Load the DP kernels from numba's disk cache (compiling them the first time ever), so
    that a timing of the DP that follows measures the DP alone."""
    solve_schedules(np.ones((3, 3)), np.array([np.inf, np.inf, 0.0]), [2])
    if numba.get_num_threads() > 1:  # the threaded kernel that T >= PARALLEL_MIN_T uses
        C = np.full((2, 3), np.inf)
        C[0, 0] = 0.0
        bp = np.zeros((2, 3), dtype=np.int16)
        kernels.dp_relax_rows_parallel(np.ones((3, 3)), C, bp, 0, 2, kernels.DP_BLOCK,
                                       numba.get_num_threads(), False)


def path_cost(L: np.ndarray, prior: np.ndarray, timesteps: Sequence[int] | np.ndarray) -> float:
    """prior[tau_K] + sum_i L[tau_{i-1}, tau_i] for one schedule, in nats (may be +inf).

    L: [T+1, T+1], prior: [T+1], timesteps: [K+1] strictly increasing from 0, each <= T
    (see strides.check_timesteps; an end before T is allowed, it costs prior[tau_K]).
    The sum runs left to right as in the DP, so it equals a DP cost bit for bit.
    """
    L, prior = _as_arrays(L, prior, "the cost table")
    tau = check_timesteps(timesteps, L.shape[0] - 1, truncated_ok=True)
    steps = L[tau[:-1], tau[1:]]
    return float(np.cumsum(steps)[-1] + prior[tau[-1]])  # cumsum adds sequentially


def solve_schedules_numpy(
    L: np.ndarray, prior: np.ndarray, budgets: Sequence[int]
) -> list[DPSolution]:
    """Reference DP in plain numpy: for each k, C[k] = min_s C[k-1, s] + L[s, :].

    Same inputs, outputs and tie rule as :func:`solve_schedules` (argmin takes the first
    minimum, so the smallest s); O(T^2) temporary per k and reads all of L for every k.
    Used by the tests and the benchmark.
    """
    L, prior, k_max = _validated(L, prior, "the cost table")
    ks = _check_budgets(budgets, k_max, "the cost table")
    n = L.shape[0]
    K = int(ks.max())
    Lm = np.where(np.triu(np.ones((n, n), dtype=bool), 1), L, np.inf)
    C = np.full((K + 1, n), np.inf)
    C[0, 0] = 0.0
    bp = np.zeros((K + 1, n), dtype=np.int64)
    cols = np.arange(n)
    for k in range(1, K + 1):
        M = C[k - 1][:, None] + Lm
        bp[k] = M.argmin(axis=0)
        C[k] = M[bp[k], cols]
    out = []
    for K in ks:
        total = C[K] + prior
        end = int(total.argmin())
        if total[end] == np.inf:
            raise BadInputError(f"no schedule with exactly {K} steps has finite cost")
        tau = np.empty(K + 1, dtype=np.int64)
        tau[K] = end
        for k in range(K, 0, -1):
            tau[k - 1] = bp[k, tau[k]]
        out.append(DPSolution(int(K), tau, float(total[end])))
    return out
