"""numba kernels against plain numpy references (random tables, every t and k)."""

import numba
import numpy as np
import pytest

from ddpm_tools.core import backtrack, kernels, numba_setup, simd, table_scan
from ddpm_tools.core.dp import solve_schedules_numpy
from ddpm_tools.errors import BadInputError

T = 300


def reference_forward(L: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """C[k, t], bp[k, t] read off the one numpy reference DP, ``solve_schedules_numpy``: with
    the prior 0 at t and +inf elsewhere, the best k-step schedule ends at t, costs C[k, t]
    (+ 0.0, bit for bit) and reaches t from s = bp[k, t]. Unreachable (t, k): C = +inf."""
    n = L.shape[0]
    C = np.full((K + 1, n), np.inf)
    C[0, 0] = 0.0
    bp = np.zeros((K + 1, n), dtype=np.int64)
    for t in range(1, n):
        prior = np.full(t + 1, np.inf)
        prior[t] = 0.0
        for k in range(1, min(t, K) + 1):
            try:
                (sol,) = solve_schedules_numpy(L[: t + 1, : t + 1], prior, [k])
            except BadInputError:  # no finite k-step path reaches t
                continue
            C[k, t], bp[k, t] = sol.cost_nats, sol.timesteps[-2]
    return C, bp


def random_table(
    seed: int, n: int = T + 1, inf_frac: float = 0.0, levels: int = 0
) -> np.ndarray:
    """Random L; with ``levels`` > 0 its entries are whole numbers below it (many ties)."""
    rng = np.random.default_rng(seed)
    L = rng.integers(0, levels, (n, n)).astype(np.float64) if levels else rng.random((n, n))
    L[rng.random((n, n)) < inf_frac] = np.inf
    L[np.tril_indices(n)] = np.nan  # s >= t is never read
    return L


def kernel_forward(L, K, block=kernels.DP_BLOCK, chunks=(None,), dtype=np.int16,
                   parallel=False, hints=True):
    """C, bp: [K+1, T+1] from the one-core kernel (or the parallel one on every numba
    thread), bp[k, t] the argmin s that ``dp_argmin`` finds, from the kernel's hint or
    (``hints=False``) without one; 0 where C is +inf."""
    n = L.shape[0]
    C = np.full((K + 1, n), np.inf)
    C[0, 0] = 0.0
    hint = np.zeros((K + 1, n) if hints else (0, 0), dtype=dtype)
    edges = [0, *[c for c in chunks if c is not None], n - 1]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if parallel:
            kernels.dp_relax_rows_parallel(L, C, hint, lo, hi, block, numba.get_num_threads(),
                                           lo > 0)
        else:
            kernels.dp_relax_rows(L, C, hint, lo, hi, block)
    bp = np.zeros((K + 1, n), dtype=np.int64)
    for k, t in zip(*np.nonzero(np.isfinite(C[1:])), strict=True):
        bp[k + 1, t] = kernels.dp_argmin(L, C, hint, k + 1, t)
        if hints:  # the argmin lies in the group of rows the hint names
            assert 0 <= bp[k + 1, t] - hint[k + 1, t] < kernels.DP_GROUP
    return C, bp


@pytest.mark.parametrize("seed,inf_frac", [(0, 0.0), (1, 0.3)])
def test_forward_equals_numpy_for_every_t_and_k(seed, inf_frac):
    L = random_table(seed, n=61, inf_frac=inf_frac)  # T = 60: blocks of 16 and a rest
    C_ref, bp_ref = reference_forward(L, 60)
    C, bp = kernel_forward(L, 60)
    assert np.array_equal(C, C_ref)  # bit for bit: same additions, same minimum
    reachable = np.isfinite(C_ref)
    assert np.array_equal(bp[reachable], bp_ref[reachable])


@pytest.mark.parametrize(
    "T_,K,inf_frac,levels",
    [(1, 1, 0.0, 0), (5, 5, 0.0, 3), (45, 45, 0.2, 3), (129, 7, 0.3, 0), (300, 32, 0.2, 4),
     (400, 399, 0.1, 0), (700, 40, 0.5, 2)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_kernel_equals_serial_and_numpy(T_, K, inf_frac, levels, threads):
    """Bit for bit, ties and +inf included, for row blocks that cross column blocks; the
    numpy reference (one DP per (t, k)) only where it is fast (T <= 45)."""
    L = random_table(10 + T_, n=T_ + 1, inf_frac=inf_frac, levels=levels)
    C1, bp1 = kernel_forward(L, K)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for block, hints in [(kernels.DP_BLOCK, True), (5, True), (kernels.DP_BLOCK, False),
                             (37, False)]:
            C2, bp2 = kernel_forward(L, K, block=block, chunks=(T_ // 3 or None,),
                                     parallel=True, hints=hints)
            assert np.array_equal(C2, C1) and np.array_equal(bp2, bp1)
    finally:
        numba.set_num_threads(before)
    if T_ <= 45:
        C_ref, bp_ref = reference_forward(L, K)
        assert np.array_equal(C1, C_ref)
        reachable = np.isfinite(C_ref)
        assert np.array_equal(bp1[reachable], bp_ref[reachable])


def numpy_forward(L: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """C, bp for every (k, t) by one broadcast per k: C[k] = min_s C[k-1, s] + L[s, :] over
    s < t, bp[k] its first argmin (the smallest s); 0 where C is +inf."""
    n = L.shape[0]
    Lm = np.where(np.triu(np.ones((n, n), dtype=bool), 1), L, np.inf)
    C = np.full((K + 1, n), np.inf)
    C[0, 0] = 0.0
    bp = np.zeros((K + 1, n), dtype=np.int64)
    for k in range(1, K + 1):
        M = C[k - 1][:, None] + Lm
        bp[k] = M.argmin(axis=0)
        C[k] = M[bp[k], np.arange(n)]
    bp[~np.isfinite(C)] = 0
    return C, bp


@pytest.mark.parametrize("block", [kernels.DP_BLOCK, 64])
@pytest.mark.parametrize("parallel", [False, True])
def test_every_budget_beyond_one_budget_chunk(block, parallel):
    """Every budget of a table with more budgets than ``DP_K_CHUNK``: the chunks of the
    pushes onto later targets and of a block's own part, ties and +inf included."""
    assert kernels.DP_K_CHUNK < T - 1
    L = random_table(12, inf_frac=0.05, levels=3)
    C_ref, bp_ref = numpy_forward(L, T)
    for hints in (True, False):
        C, bp = kernel_forward(L, T, block=block, parallel=parallel, hints=hints)
        assert np.array_equal(C, C_ref)
        assert np.array_equal(bp, bp_ref)


@pytest.mark.parametrize("block,chunks", [(1, (None,)), (7, (5, 123)), (300, (299,))])
@pytest.mark.parametrize("hints", [True, False])
def test_forward_independent_of_blocking_and_chunks(block, chunks, hints):
    L = random_table(2)
    C0, bp0 = kernel_forward(L, 40)
    C, bp = kernel_forward(L, 40, block=block, chunks=chunks, hints=hints)
    assert np.array_equal(C, C0) and np.array_equal(bp, bp0)


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("chunks", [(None,), (100, 101, 250)])
def test_parallel_kernel_any_share_count_and_cuts(threads, chunks):
    """More shares than threads (numba runs them in turn) and calls cut anywhere, after a
    block's own targets were done by the call before: the same bits."""
    L = random_table(7, levels=3)
    C0, bp0 = kernel_forward(L, 50)
    n = L.shape[0]
    for hints in (True, False):
        C = np.full((51, n), np.inf)
        C[0, 0] = 0.0
        hint = np.zeros((51, n) if hints else (0, 0), dtype=np.int16)
        edges = [0, *[c for c in chunks if c is not None], n - 1]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            kernels.dp_relax_rows_parallel(L, C, hint, lo, hi, 64, threads, lo > 0)
        assert np.array_equal(C, C0)
        for k, t in zip(*np.nonzero(np.isfinite(C[1:])), strict=True):
            assert kernels.dp_argmin(L, C, hint, k + 1, t) == bp0[k + 1, t]


def test_forward_small_budget_matches_prefix_of_full():
    L = random_table(3)
    C_full, bp_full = kernel_forward(L, T)
    C, bp = kernel_forward(L, 12)
    assert np.array_equal(C, C_full[:13]) and np.array_equal(bp, bp_full[:13])


def test_forward_int32_back_pointers():
    L = random_table(4, n=40)
    C16, bp16 = kernel_forward(L, 39)
    C32, bp32 = kernel_forward(L, 39, dtype=np.int32)
    assert np.array_equal(C16, C32) and np.array_equal(bp16, bp32)


def test_ties_take_smallest_s():
    L = np.ones((9, 9))
    C, bp = kernel_forward(L, 8)
    # C[k, t] = k for every reachable (k, t); the smallest valid predecessor is k - 1
    for t in range(1, 9):
        for k in range(1, t + 1):
            assert C[k, t] == k and bp[k, t] == k - 1


@pytest.mark.parametrize("n", [2, 3, 60, 61])
@pytest.mark.parametrize("inf_frac", [0.0, 0.02, 0.7])
def test_scan_table_reach_and_first_bad_entry(n, inf_frac):
    """Against a plain loop: with and without +inf (two paths in the kernel), for an even
    and an odd number of rows (the threads take rows in pairs)."""
    rng = np.random.default_rng(5)
    L = rng.random((n, n))
    L[rng.random((n, n)) < inf_frac] = np.inf
    L[np.tril_indices(n)] = np.nan
    reach = np.empty(n, dtype=np.int64)
    assert table_scan.scan_table(L, reach) == (-1, -1)
    ref = np.full(n, -1)
    ref[0] = 0
    for t in range(1, n):
        for s in range(t):
            if ref[s] >= 0 and np.isfinite(L[s, t]):
                ref[t] = max(ref[t], ref[s] + 1)
    assert np.array_equal(reach, ref)
    bad = [(n - 2, n - 1)] if n < 40 else [(20, 21), (9, 12), (7, 30), (n - 2, n - 1)]
    for (s, t), value in zip(bad, [np.nan, -np.inf] * 2, strict=False):
        L[s, t] = value
    assert table_scan.scan_table(L, reach) == min(bad)  # the first in row-major order


@pytest.mark.parametrize("hints,exact", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("every", [1, 7])  # 49 budgets (batches and a part), or 7
def test_best_ends_and_backtrack(hints, exact, every):
    """Every path the batched back-tracking finds against the reference back-pointers,
    with the forward pass's hints, with the hints made exact first (every state's hint
    then equals the reference step), and without hints."""
    L = random_table(6, n=50, levels=3)  # ties: the back-tracking takes the smallest s
    C_ref, bp_ref = reference_forward(L, 49)
    hint = np.zeros((50, 50) if hints else (0, 0), dtype=np.int16)
    C = np.full((50, 50), np.inf)
    C[0, 0] = 0.0
    kernels.dp_relax_rows(L, C, hint, 0, 49, kernels.DP_BLOCK)
    prior = np.random.default_rng(6).random(50) * 3
    budgets = np.arange(1, 50, every, dtype=np.int64)
    ends = np.empty(budgets.size, dtype=np.int64)
    costs = np.empty(budgets.size)
    backtrack.dp_best_ends(C, prior, budgets, ends, costs)
    offsets = np.concatenate([[0], np.cumsum(budgets + 1)[:-1]])
    paths = np.full(int((budgets + 1).sum()), -1, dtype=np.int64)
    if exact:
        backtrack.dp_resolve_hints(L, C, hint, 49)
        reachable = np.isfinite(C)
        reachable[0] = False
        assert np.array_equal(hint[reachable], bp_ref[reachable])  # every state: the step
    backtrack.dp_backtrack(L, C, hint, budgets, ends, offsets, paths, exact)
    for j, K in enumerate(budgets):
        total = C[K] + prior
        assert ends[j] == np.argmin(total) and costs[j] == total.min()
        tau = paths[offsets[j] : offsets[j] + K + 1]
        assert tau[0] == 0 and tau[-1] == ends[j] and (np.diff(tau) > 0).all()
        assert all(tau[k - 1] == bp_ref[k, tau[k]] for k in range(1, K + 1))
        steps = L[tau[:-1], tau[1:]]
        assert np.cumsum(steps)[-1] + prior[ends[j]] == costs[j]


@numba.njit
def _hint_pass_steps(L, C, bp, s, k, ta, steps):
    simd.hint_pass(L, C, bp, s, k, ta, steps)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hint_pass_equals_the_scalar_loop(dtype, seed):
    """The 16-target vector pass against the loop it replaces, element by element: ties
    (whole-number costs), +inf in C and L, any start column, and nothing outside the
    targets it was given is written."""
    rng = np.random.default_rng(seed)
    L = rng.integers(0, 6, (40, 120)).astype(np.float64)
    L[rng.random(L.shape) < 0.1] = np.inf
    C = rng.integers(0, 12, (5, 120)).astype(np.float64)
    C[rng.random(C.shape) < 0.1] = np.inf
    bp = rng.integers(0, 30, C.shape).astype(dtype)
    s, k, ta, steps = int(rng.integers(0, 30)), int(rng.integers(1, 5)), int(rng.integers(0, 40)), 4
    want_C, want_bp = C.copy(), bp.copy()
    for t in range(ta, ta + simd.LANES * steps):
        m = np.inf
        for r in range(simd.ROWS):
            x = C[k - 1, s + r] + L[s + r, t]
            m = x if x < m else m
        if m < want_C[k, t]:
            want_C[k, t], want_bp[k, t] = m, s
    _hint_pass_steps(L, C, bp, s, k, ta, steps)
    assert np.array_equal(C, want_C) and np.array_equal(bp, want_bp)


@numba.njit
def _triangle(L, C, bp, b, k0, k1, hints):
    if hints:
        simd.triangle_hints(L, C, bp, b, k0, k1)
    else:
        simd.triangle(L, C, bp, b, k0, k1)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
@pytest.mark.parametrize("hints", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triangle_equals_the_scalar_loop(dtype, hints, seed):
    """Sixteen rows onto their own targets for a range of budgets, against the scalar loop
    it replaces (``kernels._push_rows``), element by element: ties (whole-number costs),
    +inf in C and L, NaN below the diagonal (never a step), budgets that read what the
    budget before wrote, any start row, and nothing outside the piece written."""
    rng = np.random.default_rng(seed)
    L = rng.integers(0, 4, (70, 70)).astype(np.float64)
    L[rng.random(L.shape) < 0.1] = np.inf
    L[np.tril_indices(70)] = np.nan
    C = rng.integers(0, 8, (30, 70)).astype(np.float64)
    C[rng.random(C.shape) < 0.1] = np.inf
    bp = rng.integers(0, 30, C.shape).astype(dtype) if hints else np.zeros((0, 0), dtype)
    b, k0 = int(rng.integers(0, 50)), int(rng.integers(1, 8))
    k1 = k0 + int(rng.integers(1, 20))
    before = C.copy()
    want_C, want_bp = C.copy(), bp.copy()
    kernels._push_rows(L, want_C, want_bp, b, b + 16, b, b + 16, k0, k1)
    _triangle(L, C, bp, b, k0, k1, hints)
    assert np.array_equal(C, want_C) and np.array_equal(bp, want_bp)
    assert not np.array_equal(C, before)  # the piece did change something


@numba.njit(parallel=True)
def _take_all(taken, n, threads, got):
    for _ in numba.prange(threads):
        j = numba_setup.take_next(taken)
        while j < n:
            got[j] += 1
            j = numba_setup.take_next(taken)


def test_take_next_hands_out_each_piece_once():
    """Every thread takes pieces from one counter until none is left: each piece is taken
    exactly once (with a plain read, then write, every run hands some out twice)."""
    n, threads = 200000, numba.get_num_threads()
    for _ in range(5):
        taken = np.zeros(1, dtype=np.int64)
        got = np.zeros(n, dtype=np.int64)
        _take_all(taken, n, threads, got)
        assert (got == 1).all() and taken[0] == n + threads  # one last look per thread


def test_numba_cache_dir_falls_back_to_user_folder(tmp_path, monkeypatch):
    import numba

    monkeypatch.setenv("NUMBA_CACHE_DIR", "placeholder")  # so the undo also removes ours
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)  # restored after
    monkeypatch.setattr(numba_setup.os, "access", lambda *a: True)
    numba_setup.set_numba_cache_dir()  # package folder writable: numba's default stays
    assert "NUMBA_CACHE_DIR" not in numba_setup.os.environ
    monkeypatch.setattr(numba_setup.os, "access", lambda *a: False)
    numba_setup.set_numba_cache_dir()
    want = str(tmp_path / "ddpm-tools" / "numba")
    assert numba_setup.os.environ["NUMBA_CACHE_DIR"] == want and numba.config.CACHE_DIR == want


@numba.njit
def _sum_with_prefetch(a, far):
    total = 0.0
    for i in range(a.shape[0]):
        numba_setup.prefetch(a, np.int16(i), i + far)  # any integer type; far: off the end
        for j in range(a.shape[1]):
            total += a[i, j]
    return total


def test_prefetch_is_a_hint_only():
    """The prefetch intrinsic compiles for any integer index, changes nothing, and does not
    fault on an address outside the array."""
    a = np.random.default_rng(0).random((17, 9))
    in_order = 0.0
    for x in a.ravel():  # the same additions in the same order
        in_order += float(x)
    assert _sum_with_prefetch(a, 0) == in_order
    assert _sum_with_prefetch(a, 10**9) == in_order
