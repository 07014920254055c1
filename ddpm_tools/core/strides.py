"""Fixed K-step schedules (strides) and the validation of any schedule.

A K-step schedule is 0 = tau_0 < tau_1 < ... < tau_K = T (tau_K < T only with a
truncated prior); it costs exactly K network calls. The two classic strides:

* even: tau_i = round(T * i / K);
* quadratic: tau_i = round(T * (i / K)^2), made strictly increasing.

These are the "even stride" and "quadratic stride" baselines Watson et al. 2021 compare
the DP against (after DDIM's "uniform" and "quad" skips, Song et al. 2021; DDIM's code
spans [0, 0.8 T] and truncates, ours spans [0, T] and rounds, as issue 4 specifies).

``round`` is round-half-up, computed in integers (no float error at any T, K):
round(p / q) = (2p + q) // (2q).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ddpm_tools.errors import BadInputError


def _check_budget(T: int, K: int, name: str) -> None:
    if int(T) != T or T < 1:
        raise BadInputError(f"T must be an integer >= 1 (got {T})")
    if int(K) != K or not 1 <= K <= T:
        raise BadInputError(
            f"a {name} stride needs 1 <= K <= T (got K = {K}, T = {T}); choose a budget "
            f"between 1 and {T}"
        )


def even_stride(T: int, K: int) -> np.ndarray:
    """tau_i = round(T * i / K), i = 0..K. Returns [K+1] int64, strictly increasing to T.

    For K <= T the real values are at least 1 apart, so rounding keeps them distinct.
    """
    _check_budget(T, K, "even")
    i = np.arange(K + 1, dtype=np.int64)
    return (2 * T * i + K) // (2 * K)


def quadratic_stride(T: int, K: int) -> np.ndarray:
    """tau_i = round(T * (i / K)^2), made strictly increasing. Returns [K+1] int64.

    Near 0 the squares crowd together (several i round to the same t). Rule: one pass
    from i = 1 up, tau_i = max(round(T i^2 / K^2), tau_{i-1} + 1). For K <= T this ends at
    exactly tau_K = T (round(T i^2/K^2) + K - i <= T for every i), so only the crowded
    small steps move, each to the next free time.
    """
    _check_budget(T, K, "quadratic")
    i = np.arange(K + 1, dtype=np.int64)
    raw = (2 * T * i * i + K * K) // (2 * K * K)
    # tau_i = max_{j <= i} (raw_j + i - j): a running max of raw_j - j, plus i
    return np.maximum.accumulate(raw - i) + i


def check_timesteps(
    timesteps: Sequence[int] | np.ndarray, T: int, truncated_ok: bool = False
) -> np.ndarray:
    """``timesteps`` as [K+1] int64 if they form a schedule for T, else BadInputError.

    A schedule starts at 0, strictly increases, stays within [0, T], has K >= 1 steps
    and ends at T (or anywhere in [1, T] when ``truncated_ok``: a truncated prior).
    """
    tau = np.asarray(timesteps)
    if tau.ndim != 1 or tau.size < 2:
        raise BadInputError(
            f"timesteps must be a list of at least 2 integers 0 = tau_0 < ... < tau_K "
            f"(got shape {tau.shape})"
        )
    if not np.issubdtype(tau.dtype, np.integer):
        if not (np.issubdtype(tau.dtype, np.number) and np.all(tau == np.round(tau))):
            raise BadInputError(f"timesteps must be integers (got {tau.tolist()[:8]}...)")
    tau = tau.astype(np.int64)
    if tau[0] != 0:
        raise BadInputError(f"timesteps must start at 0 (x_0, the data), got {tau[0]} first")
    down = np.flatnonzero(np.diff(tau) <= 0)
    if down.size:
        i = int(down[0]) + 1
        raise BadInputError(
            f"timesteps must strictly increase, but tau_{i} = {tau[i]} follows "
            f"tau_{i - 1} = {tau[i - 1]}"
        )
    if tau[-1] > T:
        raise BadInputError(f"timesteps end at {tau[-1]}, beyond T = {T}; keep them in [0, T]")
    if not truncated_ok and tau[-1] != T:
        raise BadInputError(
            f"timesteps end at {tau[-1]} but must end at T = {T} (only a truncated prior "
            "allows an earlier start)"
        )
    return tau
