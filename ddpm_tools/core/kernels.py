"""numba kernels: every compiled loop of ddpm-tools lives here.

The dynamic program of Watson et al. 2021 ("Learning to Efficiently Sample from
Diffusion Probabilistic Models", Sec. 3) over a cost table ``L: [T+1, T+1]``:

    C[k, t] = min_{s < t} C[k-1, s] + L[s, t],   C[0, 0] = 0,  C[0, t] = +inf for t > 0,

the least cost of reaching time t from 0 in exactly k steps. Layout and loop order:

* the state ``C: [K+1, T+1]`` float64 is k-major, so for a fixed (k, s) the update over a
  block of targets t is one contiguous vector loop
  (``C[k, t] <- min(C[k, t], C[k-1, s] + L[s, t])``, L read along its row s);
* rows s are pushed in ascending order, so ``C[:, s]`` is final when row s is read; with
  strict ``<`` the smallest s wins every tie;
* rows are taken in blocks of ``block`` sources; targets in blocks of ``DP_COLUMNS``
  columns; for each (column block, k) the block's rows run back to back, so the slice
  ``C[k, t-block]`` stays in L1 and L[s, t-block] is reused from cache;
* only ``k <= s + 1`` can be finite in ``C[k-1, s] + L[s, t]``, so fewer k for small s;
* back-pointers ``bp: [K+1, T+1]`` hold the argmin s in the smallest integer type that
  fits (int16 up to T = 32768), written as ``bp.dtype`` values;
* an improvement is a branch-free select on both C and bp (``better = cand < C[k, t]``),
  which vectorizes on AVX2 as well as AVX-512 (a conditional store needs masked stores,
  slow or missing on many CPUs); four rows s share one pass over t, so C[k, t] and
  bp[k, t] stay in registers across them (2.5-3x faster than one row per pass on AVX2);
* the column blocks of one row block are independent: ``dp_relax_rows_parallel`` spreads
  them over numba's threads (``NUMBA_NUM_THREADS``), one meeting per row block. Every
  (k, t) still sees the rows s in ascending order, so both kernels give the same bits.

Threads come from numba's ``workqueue`` layer unless ``NUMBA_THREADING_LAYER`` says
otherwise (see below). Compiled with ``cache=True`` (first call compiles, later processes
load from disk; the parallel kernel too) and without fastmath: the code adds +inf (a
step that cannot be taken) on purpose.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def _private_folder(folder: Path) -> bool:
    """``folder`` exists, belongs to this user and no one else may write in it (group and
    others have no write permission)."""
    try:
        st = folder.stat()
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return owner_ok and not st.st_mode & 0o022


def _set_numba_cache_dir() -> None:
    """Where numba keeps its disk cache. The cache holds pickles that numba loads, so
    only this user may be able to write there: ``NUMBA_CACHE_DIR`` when the user set it;
    else numba's default, ``__pycache__`` in the package folder, when that folder is this
    user's alone; else the per-user folder ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/ddpm-tools/numba``, created with mode 0700 (and set to 0700 if it exists); failing
    that, a fresh temporary folder of mode 0700."""
    package = Path(__file__).parent
    if os.environ.get("NUMBA_CACHE_DIR") or (os.access(package, os.W_OK)
                                             and _private_folder(package)):
        return
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "ddpm-tools" / "numba"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if hasattr(os, "getuid") and folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)
    except OSError:
        pass
    if not _private_folder(folder):  # not ours alone: a fresh 0700 folder for this process
        folder = Path(tempfile.mkdtemp(prefix="ddpm-tools-numba-"))
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:  # imported earlier by someone else: set the live config too
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_set_numba_cache_dir()

import numba  # noqa: E402
import numpy as np  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    # numba's own pool sleeps while it waits; OpenMP's spins, and on a machine where
    # other processes keep the cores busy a spinning thread takes the time the thread
    # it waits for needs (the threaded DP then ran 2-4x slower than on one thread)
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

DP_BLOCK = 16  # source rows s pushed together by one thread (C[k, t-block] reused per block)
DP_BLOCK_PARALLEL = 128  # rows per meeting of the threads in the parallel kernel
DP_COLUMNS = 128  # target columns t per unit of work (C[k, t-block] stays in L1)


@numba.njit(cache=True)
def scan_table(L: np.ndarray, reach: np.ndarray) -> tuple[int, int]:
    """Check the used part of a cost table and find the longest finite path to each t.

    L: [T+1, T+1] float64 (only s < t is read). reach: [T+1] int64 output: the largest
    number of steps of a path 0 -> t whose every step is finite, -1 if none (reach[0] = 0).
    Returns the first (s, t) in row-major order with L[s, t] NaN or -inf, or (-1, -1).
    """
    n = L.shape[0]
    inf = np.inf
    for t in range(n):
        reach[t] = -1
    reach[0] = 0
    for s in range(n - 1):
        row = L[s]
        n_bad = 0  # NaN and -inf both fail "> -inf": a branch-free count vectorizes
        for t in range(s + 1, n):
            n_bad += 0 if row[t] > -inf else 1
        if n_bad:
            for t in range(s + 1, n):
                if not row[t] > -inf:
                    return s, t
        if reach[s] >= 0:
            r1 = reach[s] + 1
            for t in range(s + 1, n):
                if row[t] < inf and r1 > reach[t]:
                    reach[t] = r1
    return -1, -1


@numba.njit(cache=True)
def _push_inside(L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int) -> None:
    """Push rows s in [s0, s1) onto the targets t < s1 of the same block, s ascending."""
    K = C.shape[0] - 1
    inf = np.inf
    for s in range(s0, s1):
        sv = bp.dtype.type(s)
        Ls = L[s]
        for k in range(1, min(s + 1, K) + 1):
            c = C[k - 1, s]
            if c == inf:
                continue
            Ck = C[k]
            bk = bp[k]
            for t in range(s + 1, s1):
                cand = c + Ls[t]
                better = cand < Ck[t]
                bk[t] = sv if better else bk[t]
                Ck[t] = cand if better else Ck[t]


@numba.njit(cache=True)
def _push_columns(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int, ta: int, tb: int
) -> None:
    """Push the final rows s in [s0, s1) onto the targets t in [ta, tb), ta >= s1.

    Loop order k, s, t: the slice C[k, ta:tb] stays in L1 while the block's rows update
    it in ascending s (strict ``<``: the smallest s wins ties). Rows go four at a time
    through one pass over t, so C[k, t] and bp[k, t] are loaded and stored once per four
    rows; the innermost loop is branch-free and vectorizes.
    """
    K = C.shape[0] - 1
    inf = np.inf
    w = tb - ta
    for k in range(1, min(s1, K) + 1):
        Ck = C[k, ta:tb]
        bk = bp[k, ta:tb]
        s = max(s0, k - 1)  # C[k-1, s] = +inf for s < k-1
        while s + 4 <= s1:
            c0, c1, c2, c3 = C[k - 1, s], C[k - 1, s + 1], C[k - 1, s + 2], C[k - 1, s + 3]
            L0, L1, L2, L3 = L[s, ta:tb], L[s + 1, ta:tb], L[s + 2, ta:tb], L[s + 3, ta:tb]
            v0, v1 = bp.dtype.type(s), bp.dtype.type(s + 1)
            v2, v3 = bp.dtype.type(s + 2), bp.dtype.type(s + 3)
            for j in range(w):
                cur = Ck[j]
                arg = bk[j]
                x = c0 + L0[j]
                better = x < cur
                arg = v0 if better else arg
                cur = x if better else cur
                x = c1 + L1[j]
                better = x < cur
                arg = v1 if better else arg
                cur = x if better else cur
                x = c2 + L2[j]
                better = x < cur
                arg = v2 if better else arg
                cur = x if better else cur
                x = c3 + L3[j]
                better = x < cur
                arg = v3 if better else arg
                cur = x if better else cur
                Ck[j] = cur
                bk[j] = arg
            s += 4
        while s < s1:  # the last rows of the block, one at a time
            c = C[k - 1, s]
            if c != inf:
                sv = bp.dtype.type(s)
                Ls = L[s, ta:tb]
                for j in range(w):
                    x = c + Ls[j]
                    better = x < Ck[j]
                    bk[j] = sv if better else bk[j]
                    Ck[j] = x if better else Ck[j]
            s += 1


@numba.njit(cache=True)
def dp_relax_rows(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s_lo: int, s_hi: int, block: int
) -> None:
    """Push source rows s in [s_lo, s_hi) of the DP forward pass onto every t > s, in place.

    L: [T+1, T+1] float64 (only s < t read; no NaN, no -inf). C: [K+1, T+1] float64, with
    C[0, 0] = 0 and +inf elsewhere before the first call. bp: [K+1, T+1] integer
    back-pointers. Rows below ``s_lo`` must have been pushed already (calls in ascending
    order). After the last call C[k, t] is the least cost of 0 -> t in exactly k steps and
    bp[k, t] the smallest s attaining it. One core; see :func:`dp_relax_rows_parallel`.
    """
    n = L.shape[0]
    for s0 in range(s_lo, s_hi, block):
        s1 = min(s0 + block, s_hi)
        _push_inside(L, C, bp, s0, s1)  # 1. C[:, s] becomes final in ascending s
        for ta in range(s1, n, DP_COLUMNS):  # 2. every later target, a column block at a time
            _push_columns(L, C, bp, s0, s1, ta, min(ta + DP_COLUMNS, n))


@numba.njit(cache=True, parallel=True)
def dp_relax_rows_parallel(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s_lo: int, s_hi: int, block: int
) -> None:
    """:func:`dp_relax_rows` with the column blocks of step 2 spread over numba's threads.

    Each target column t still takes the rows s in ascending order, so C and bp equal the
    one-core result bit for bit. Threads meet once per block of ``block`` rows (large, so
    that a thread the OS pauses holds the other up rarely); inside a block, step 1 runs
    on one thread in sub-blocks of ``DP_BLOCK`` rows.
    """
    n = L.shape[0]
    for s0 in range(s_lo, s_hi, block):
        s1 = min(s0 + block, s_hi)
        for b0 in range(s0, s1, DP_BLOCK):  # 1. the block's own targets, one thread
            b1 = min(b0 + DP_BLOCK, s1)
            _push_inside(L, C, bp, b0, b1)
            if b1 < s1:
                _push_columns(L, C, bp, b0, b1, b1, s1)
        n_col_blocks = (n - s1 + DP_COLUMNS - 1) // DP_COLUMNS
        for j in numba.prange(n_col_blocks):  # 2. every later target, all threads
            ta = s1 + j * DP_COLUMNS
            _push_columns(L, C, bp, s0, s1, ta, min(ta + DP_COLUMNS, n))


@numba.njit(cache=True)
def dp_best_ends(
    C: np.ndarray, prior: np.ndarray, budgets: np.ndarray, ends: np.ndarray, costs: np.ndarray
) -> None:
    """For each budget K: the start t minimizing C[K, t] + prior[t] (smallest t on ties).

    C: [Kmax+1, T+1] float64; prior: [T+1] float64; budgets: [B] int64 (each <= Kmax).
    Outputs ends: [B] int64 (-1 if every total is +inf) and costs: [B] float64.
    """
    n = C.shape[1]
    for j in range(budgets.shape[0]):
        K = budgets[j]
        best = np.inf
        arg = -1
        for t in range(K, n):
            v = C[K, t] + prior[t]
            if v < best:
                best = v
                arg = t
        ends[j] = arg
        costs[j] = best


@numba.njit(cache=True)
def dp_backtrack(bp: np.ndarray, end: int, tau: np.ndarray) -> None:
    """Follow back-pointers from (end, K) to 0, K = tau.size - 1.

    bp: [Kmax+1, T+1]; tau: [K+1] int64 output, 0 = tau_0 < ... < tau_K = end.
    """
    t = end
    for k in range(tau.shape[0] - 1, 0, -1):
        tau[k] = t
        t = np.int64(bp[k, t])
    tau[0] = t
