"""Checking a cost table before the DP: a numba kernel.

:func:`scan_table` reads the part of L the DP uses (s < t) once, finds the first NaN or
-inf (an input error, reported by :func:`ddpm_tools.core.dp.check_table`) and the most
steps a path of finite steps can take to each t (the largest budget each end allows).
Compiled with ``cache=True`` and without fastmath (it tests for inf and NaN).
"""

from __future__ import annotations  # noqa: I001  (numba_setup comes before numba)

from ddpm_tools.core import numba_setup  # noqa: F401  (numba's disk cache and threads)
import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def scan_table(L: np.ndarray, reach: np.ndarray) -> tuple[int, int]:
    """Check the used part of a cost table and find the longest finite path to each t.

    L: [T+1, T+1] float64 (only s < t is read). reach: [T+1] int64 output: the largest
    number of steps of a path 0 -> t whose every step is finite, -1 if none (reach[0] = 0).
    Returns the first (s, t) in row-major order with L[s, t] NaN or -inf, or (-1, -1).

    1. One pass over the rows, spread over numba's threads (row s with row T-1-s, so
       every thread reads the same amount), counts the bad and the +inf entries per row
       with a branch-free loop that vectorizes.
    2. No +inf anywhere (a trained set's table): every t is reached in t steps. Otherwise
       the path lengths by one more pass, in ascending s (:func:`_longest_paths`).
    """
    n = L.shape[0]
    inf = np.inf
    n_bad = np.zeros(n, dtype=np.int64)
    n_inf = np.zeros(n, dtype=np.int64)
    for i in numba.prange(n // 2):  # rows i and n-2-i (if T is odd, the middle row twice)
        _count_row(L, np.int64(i), n_bad, n_inf)
        _count_row(L, n - 2 - np.int64(i), n_bad, n_inf)
    for s in range(n - 1):
        if n_bad[s]:
            for t in range(s + 1, n):
                if not L[s, t] > -inf:
                    return s, t
    if n_inf.sum() == 0:
        for t in range(n):
            reach[t] = t
    else:
        _longest_paths(L, reach)
    return -1, -1


@numba.njit(cache=True)
def _count_row(L: np.ndarray, s: int, n_bad: np.ndarray, n_inf: np.ndarray) -> None:
    """n_bad[s], n_inf[s]: how many L[s, t], t > s, are NaN or -inf, and +inf."""
    row = L[s, s + 1 :]  # a 0-based view: with t from s + 1, nothing vectorizes
    bad = 0
    infs = 0
    for j in range(row.shape[0]):
        x = row[j]
        bad += 0 if x > -np.inf else 1  # NaN and -inf both fail "> -inf"
        infs += 1 if x == np.inf else 0
    n_bad[s] = bad
    n_inf[s] = infs


@numba.njit(cache=True)
def _longest_paths(L: np.ndarray, reach: np.ndarray) -> None:
    """reach[t]: the most steps of a path 0 -> t with every L[s, t] < +inf (-1: none).

    Rows in ascending s, each read once by a branch-free loop that vectorizes: the path
    lengths are float64 (exact below 2^53), so an update is a compare, a select and a
    max; the loop runs over 0-based views of the row (see scan_table).
    """
    n = L.shape[0]
    longest = np.full(n, -1.0)
    longest[0] = 0.0
    for s in range(n - 1):
        row = L[s, s + 1 :]
        later = longest[s + 1 :]
        r1 = longest[s] + 1.0 if longest[s] >= 0.0 else -1.0  # -1: the update does nothing
        for j in range(row.shape[0]):
            later[j] = max(r1 if row[j] < np.inf else -1.0, later[j])
    for t in range(n):
        reach[t] = np.int64(longest[t])
