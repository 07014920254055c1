"""The DP against brute-force enumeration, the numpy reference, and bad input."""

import itertools

import numpy as np
import pytest

from ddpm_tools.core import dp, kernels
from ddpm_tools.core.dp import (
    check_table,
    path_cost,
    solve_all_budgets,
    solve_schedules,
    solve_schedules_numpy,
)
from ddpm_tools.errors import BadInputError


def brute_force(L, prior, K):
    """Least cost over all K-step paths; ties: smallest tau_K, then tau_{K-1}, ... (the DP's
    rule: smallest start, smallest s at every step). Sums left to right like the DP."""
    T = L.shape[0] - 1
    best = None
    for inner in itertools.combinations(range(1, T + 1), K):
        tau = (0, *inner)
        c = 0.0
        for s, t in itertools.pairwise(tau):
            c += L[s, t]
        key = (c + prior[tau[-1]], tuple(reversed(tau)))
        if best is None or key < best:
            best = key
    return best[0], tuple(reversed(best[1]))


def random_case(rng, integer: bool):
    T = int(rng.integers(1, 13))
    n = T + 1
    L = rng.integers(0, 4, (n, n)).astype(float) if integer else rng.random((n, n)) * 5
    L[rng.random((n, n)) < 0.2] = np.inf
    L[np.tril_indices(n)] = rng.choice([np.nan, -np.inf, 7.0])  # ignored: s >= t
    prior = np.full(n, np.inf)
    prior[T] = rng.integers(0, 3) if integer else rng.random()
    if rng.random() < 0.5:  # a truncated prior: finite at several t, the DP picks the start
        idx = rng.choice(np.arange(1, n), size=min(3, T), replace=False)
        prior[idx] = rng.integers(0, 3, idx.size) if integer else rng.random(idx.size)
    return L, prior


@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer-ties"])
def test_dp_equals_brute_force_for_every_budget(integer):
    rng = np.random.default_rng(11 if integer else 10)
    checked = infeasible = 0
    for _ in range(60):
        L, prior = random_case(rng, integer)
        T = L.shape[0] - 1
        try:
            k_max = check_table(L, prior)
        except BadInputError:
            continue  # no finite path at all (covered below)
        for K in range(1, T + 1):
            cost, tau = brute_force(L, prior, K)
            if cost == np.inf:
                infeasible += 1
                with pytest.raises(BadInputError):
                    solve_schedules(L, prior, [K])
                continue
            assert K <= k_max
            (sol,) = solve_schedules(L, prior, [K])
            assert sol.cost_nats == cost and tuple(sol.timesteps) == tau, (K, sol, tau)
            assert sol.timesteps.dtype == np.int64 and sol.budget == K
            checked += 1
        assert all(brute_force(L, prior, K)[0] == np.inf for K in range(k_max + 1, T + 1))
    assert checked > 200 and infeasible > 0


def test_smallest_s_wins_ties():
    L = np.ones((6, 6))  # every K-step path costs K: all tie
    prior = np.full(6, np.inf)
    prior[5] = 0.0
    got = {s.budget: s.timesteps.tolist() for s in solve_all_budgets(L, prior)}
    assert got[1] == [0, 5] and got[2] == [0, 1, 5] and got[3] == [0, 1, 2, 5]
    prior[3] = 0.0  # the same cost starting at 3 or 5: the smallest start wins
    assert solve_schedules(L, prior, [2])[0].timesteps.tolist() == [0, 1, 3]


@pytest.mark.parametrize("seed", [0, 1])
def test_dp_equals_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    n = 121
    L = rng.random((n, n)) + 0.01
    L[rng.random((n, n)) < 0.1 * seed] = np.inf
    prior = np.full(n, np.inf)
    prior[[60, 90, 120]] = rng.random(3) * 4
    budgets = [1, 2, 5, 17, 40, 77, 100]
    for a, b in zip(solve_schedules(L, prior, budgets), solve_schedules_numpy(L, prior, budgets),
                    strict=True):
        assert a.budget == b.budget and a.cost_nats == b.cost_nats
        assert np.array_equal(a.timesteps, b.timesteps)
        assert path_cost(L, prior, a.timesteps) == a.cost_nats


def test_budgets_in_given_order_and_all_budgets():
    rng = np.random.default_rng(3)
    L = rng.random((31, 31))
    prior = np.full(31, np.inf)
    prior[30] = 1.0
    sols = solve_schedules(L, prior, [7, 2, 7, 30])
    assert [s.budget for s in sols] == [7, 2, 7, 30]
    assert sols[3].timesteps.tolist() == list(range(31))
    every = solve_all_budgets(L, prior)
    assert [s.budget for s in every] == list(range(1, 31))
    assert every[6].cost_nats == sols[0].cost_nats


def test_infeasible_budgets_inside_range():
    L = np.full((5, 5), np.inf)
    L[0, 2] = L[2, 4] = L[0, 1] = L[1, 4] = 1.0  # only 2-step paths reach t = 4
    prior = np.full(5, np.inf)
    prior[4] = 0.0
    assert check_table(L, prior) == 2
    with pytest.raises(BadInputError, match="no schedule with exactly 1 steps"):
        solve_schedules(L, prior, [1])
    assert [s.budget for s in solve_all_budgets(L, prior)] == [2]


def test_back_pointer_dtype():
    assert dp._bp_dtype(1000) is np.int16 and dp._bp_dtype(32768) is np.int16
    assert dp._bp_dtype(32769) is np.int32


def table(T=6):
    L = np.arange((T + 1) ** 2, dtype=float).reshape(T + 1, T + 1) / 10
    prior = np.full(T + 1, np.inf)
    prior[T] = 0.0
    return L, prior


@pytest.mark.parametrize("mutate,message", [
    (lambda L, p: (L[:, :-1], p), r"must be square"),
    (lambda L, p: (L, p[:-1]), r"prior must have T\+1 = 7"),
    (lambda L, p: (np.where(np.eye(7, k=3, dtype=bool), np.nan, L), p), r"L\[0, 3\]"),
    (lambda L, p: (np.where(np.eye(7, k=1, dtype=bool), -np.inf, L), p), r"-inf at L\[0, 1\]"),
    (lambda L, p: (L, np.where(np.arange(7) == 2, np.nan, p)), r"prior\[2\]"),
    (lambda L, p: (L, np.full(7, np.inf)), r"no schedule of finite cost"),
])
def test_bad_tables(mutate, message):
    L, prior = mutate(*table())
    with pytest.raises(BadInputError, match=message):
        solve_schedules(L, prior, [2])


def test_entries_below_diagonal_are_ignored():
    L, prior = table()
    L2 = L.copy()
    L2[np.tril_indices(7)] = np.nan
    a, b = solve_schedules(L, prior, [3])[0], solve_schedules(L2, prior, [3])[0]
    assert a.cost_nats == b.cost_nats and np.array_equal(a.timesteps, b.timesteps)


@pytest.mark.parametrize("budgets,message", [
    ([0], r"budget 0 is outside 1\.\.6.*at most 6 steps"),
    ([3, 7], r"budget 7 is outside 1\.\.6"),
    ([], r"no budget given"),
    ([2.5], r"not an integer"),
])
def test_bad_budgets(budgets, message):
    with pytest.raises(BadInputError, match=message):
        solve_schedules(*table(), budgets)
    with pytest.raises(BadInputError, match=message):
        solve_schedules_numpy(*table(), budgets)


def test_path_cost_rejects_non_schedules():
    L, prior = table()
    assert path_cost(L, prior, [0, 6]) == L[0, 6]
    for bad in ([1, 6], [0, 3, 3, 6], [0, 7], [0]):
        with pytest.raises(BadInputError):
            path_cost(L, prior, bad)


def test_threads_do_not_change_the_schedules():
    import numba

    rng = np.random.default_rng(11)
    T = dp.PARALLEL_MIN_T + 45
    L = rng.integers(0, 5, (T + 1, T + 1)).astype(np.float64)  # many ties
    L[rng.random(L.shape) < 0.2] = np.inf
    prior = np.where(rng.random(T + 1) < 0.5, rng.random(T + 1), np.inf)
    prior[T] = 0.0
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = dp.solve_schedules(L, prior, [1, 7, 32])
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = dp.solve_schedules(L, prior, [1, 7, 32])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many, strict=True):
        assert a.cost_nats == b.cost_nats and np.array_equal(a.timesteps, b.timesteps)


def test_forward_state_rows_start_on_cache_lines():
    """C and the hints of the forward pass start on a 64-byte boundary, their rows are
    ``DP_ALIGN`` entries apart, and the padding past T+1 does not change the schedules
    (they equal the numpy reference)."""
    rng = np.random.default_rng(3)
    L = rng.random((301, 301))
    prior = np.full(301, np.inf)
    prior[-1] = 0.0
    C, bp = dp._forward(L, 300, True, None)
    for a in (C, bp):
        assert a.shape[1] % kernels.DP_ALIGN == 0 and a.shape[1] >= 301
        assert a.ctypes.data % 64 == 0 and a.strides[0] % (kernels.DP_ALIGN * a.itemsize) == 0
    got = dp.solve_all_budgets(L, prior)
    want = dp.solve_schedules_numpy(L, prior, range(1, 301))
    assert all(np.array_equal(g.timesteps, w.timesteps) and g.cost_nats == w.cost_nats
               for g, w in zip(got, want, strict=True))
