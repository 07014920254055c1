"""The DP's back-tracking, many schedules at once: a numba kernel.

After the forward pass (:mod:`ddpm_tools.core.kernels`), each schedule is found from its
end: step k into t came from the smallest s with C[k-1, s] + L[s, t] == C[k, t]
(:func:`kernels.dp_argmin`). One path's steps depend on each other, and each one reads
memory far from the last (bp[k, t], C[k-1, s] and a few rows of L at column t, in tables
larger than every cache); the steps of different paths do not depend on each other. So
each thread follows a batch of paths side by side: for every path of the batch it first
prefetches what the path's next step reads, then takes the steps, and the reads of the
batch overlap instead of waiting in turn.
"""

from __future__ import annotations

import numba
import numpy as np

from ddpm_tools.core import kernels, numba_setup

BATCH = 16  # paths one thread follows side by side


@numba.njit(cache=True, parallel=True)
def dp_backtrack(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, budgets: np.ndarray, ends: np.ndarray,
    offsets: np.ndarray, out: np.ndarray,
) -> None:
    """Follow the best steps back to 0 for many budgets at once, spread over the threads.

    L, C, bp: as left by the forward pass (bp [0, 0]: no hints). budgets, ends, offsets:
    [m] int64: budget K_j and its start t (>= 0) from :func:`kernels.dp_best_ends`;
    ``out[offsets[j] : offsets[j] + K_j + 1]`` gets 0 = tau_0 < ... < tau_K = ends[j],
    each step the smallest s of :func:`kernels.dp_argmin`. Budgets go in batches of
    ``BATCH`` neighbours (paths of about the same length); numba hands each thread a
    contiguous range of the loop below, which takes the batches first, last, second, ...,
    so that every range holds short and long paths alike.
    """
    m = budgets.shape[0]
    nb = (m + BATCH - 1) // BATCH
    hints = bp.shape[0] > 0
    for i in numba.prange(nb):
        j0 = (i // 2 if i % 2 == 0 else nb - 1 - i // 2) * BATCH
        j1 = min(j0 + BATCH, m)
        t = ends[j0:j1].copy()  # each path's current time and budget
        k = budgets[j0:j1].copy()
        for q in range(j1 - j0):
            out[offsets[j0 + q] + k[q]] = t[q]
        left = j1 - j0
        while left > 0:
            if hints:  # the group of rows each next step reads: C[k-1, h:h+8], L[h:h+8, t]
                for q in range(j1 - j0):
                    if k[q] > 0:
                        h = np.int64(bp[k[q], t[q]])
                        numba_setup.prefetch(C, k[q] - 1, h)
                        numba_setup.prefetch(C, k[q] - 1, h + kernels.DP_GROUP - 1)
                        for r in range(kernels.DP_GROUP):
                            numba_setup.prefetch(L, h + r, t[q])
            left = 0
            for q in range(j1 - j0):
                if k[q] > 0:
                    t[q] = kernels.dp_argmin(L, C, bp, k[q], t[q])
                    k[q] -= 1
                    out[offsets[j0 + q] + k[q]] = t[q]
                    if k[q] > 0:
                        left += 1
                        if hints:  # the hint the next step starts from
                            numba_setup.prefetch(bp, k[q], t[q])
