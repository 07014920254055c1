"""numba kernels: every compiled loop of ddpm-tools lives here.

The dynamic program of Watson et al. 2021 ("Learning to Efficiently Sample from
Diffusion Probabilistic Models", Sec. 3) over a cost table ``L: [T+1, T+1]``:

    C[t, k] = min_{s < t} C[s, k-1] + L[s, t],   C[0, 0] = 0,  C[t, 0] = +inf for t > 0,

the least cost of reaching time t from 0 in exactly k steps. Layout and loop order:

* the state ``C: [T+1, K+1]`` float64 is t-major, so for a fixed (s, t) the update over
  k is one contiguous vector loop (``C[t, 1:] <- min(C[t, 1:], C[s, :-1] + L[s, t])``);
* rows s are pushed in ascending order, so ``C[s]`` is final when row s is read; with
  strict ``<`` the smallest s wins every tie;
* rows are taken in blocks of ``block`` sources; for each target t the block's updates
  run back to back, so ``C[t]`` stays in cache and each entry of L is read once;
* only ``k <= s + 1`` can be finite in ``C[s, k-1] + L[s, t]``, so shorter k loops for
  small s;
* back-pointers ``bp: [T+1, K+1]`` hold the argmin s in the smallest integer type that
  fits (int16 up to T = 32768), written as ``bp.dtype`` values;
* an improvement is a conditional store (``if cand < C[t, k]: ...``), which LLVM turns
  into masked vector stores on AVX-512; a branch-free select that always rewrites bp was
  2-3x slower here.

Compiled with ``cache=True`` (first call compiles, later processes load from disk) and
without fastmath: the code adds +inf (a step that cannot be taken) on purpose.
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

DP_BLOCK = 16  # source rows s handled together per target t (C[t] reused from cache)


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
def dp_relax_rows(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s_lo: int, s_hi: int, block: int
) -> None:
    """Push source rows s in [s_lo, s_hi) of the DP forward pass onto every t > s, in place.

    L: [T+1, T+1] float64 (only s < t read; no NaN, no -inf). C: [T+1, K+1] float64, with
    C[0, 0] = 0 and +inf elsewhere before the first call. bp: [T+1, K+1] integer
    back-pointers. Rows below ``s_lo`` must have been pushed already (calls in ascending
    order). After the last call C[t, k] is the least cost of 0 -> t in exactly k steps and
    bp[t, k] the smallest s attaining it.
    """
    n = L.shape[0]
    K = C.shape[1] - 1
    inf = np.inf
    for s0 in range(s_lo, s_hi, block):
        s1 = min(s0 + block, s_hi)
        # 1. inside the block: C[s] becomes final in ascending s
        for s in range(s0, s1):
            kmax = min(s + 1, K)
            Cs = C[s]
            sv = bp.dtype.type(s)
            for t in range(s + 1, s1):
                l_st = L[s, t]
                if l_st == inf:
                    continue
                Ct = C[t]
                bt = bp[t]
                for k in range(1, kmax + 1):
                    cand = Cs[k - 1] + l_st
                    if cand < Ct[k]:
                        Ct[k] = cand
                        bt[k] = sv
        # 2. every later target t takes the whole block while C[t] is in cache
        for t in range(s1, n):
            Ct = C[t]
            bt = bp[t]
            for s in range(s0, s1):
                l_st = L[s, t]
                if l_st == inf:
                    continue
                kmax = min(s + 1, K)
                Cs = C[s]
                sv = bp.dtype.type(s)
                for k in range(1, kmax + 1):
                    cand = Cs[k - 1] + l_st
                    if cand < Ct[k]:
                        Ct[k] = cand
                        bt[k] = sv


@numba.njit(cache=True)
def dp_best_ends(
    C: np.ndarray, prior: np.ndarray, budgets: np.ndarray, ends: np.ndarray, costs: np.ndarray
) -> None:
    """For each budget K: the start t minimizing C[t, K] + prior[t] (smallest t on ties).

    C: [T+1, Kmax+1] float64; prior: [T+1] float64; budgets: [B] int64 (each <= Kmax).
    Outputs ends: [B] int64 (-1 if every total is +inf) and costs: [B] float64.
    """
    n = C.shape[0]
    for j in range(budgets.shape[0]):
        K = budgets[j]
        best = np.inf
        arg = -1
        for t in range(K, n):
            v = C[t, K] + prior[t]
            if v < best:
                best = v
                arg = t
        ends[j] = arg
        costs[j] = best


@numba.njit(cache=True)
def dp_backtrack(bp: np.ndarray, end: int, tau: np.ndarray) -> None:
    """Follow back-pointers from (end, K) to 0, K = tau.size - 1.

    bp: [T+1, Kmax+1]; tau: [K+1] int64 output, 0 = tau_0 < ... < tau_K = end.
    """
    t = end
    for k in range(tau.shape[0] - 1, 0, -1):
        tau[k] = t
        t = np.int64(bp[t, k])
    tau[0] = t
