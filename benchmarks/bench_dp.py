"""Benchmark the DP kernel against the plain numpy DP and an O(T^3) all-budgets DP.

Cases (issue 17, part 2; targets for a 2-core machine):

* T = 4000, K = 32: <= 0.05 s on every numba thread (``NUMBA_NUM_THREADS``, default all
  cores; CI has 2), shown next to one thread and the plain numpy DP (one [T+1, T+1]
  min/argmin per k);
* every budget 1..T at T = 1000 next to an Analytic-DPM-style DP (Bao et al. 2022: all
  budgets by one min over s per (k, t), O(T^3)); at T = 4000: <= 1.5 s (the O(T^3) DP is
  extrapolated from its T = 1000 time by (4000/1000)^3 there);
* peak extra memory for T = 4000, every budget: < 2x the size of L (tracemalloc sees
  every array the DP allocates; the resident-set high-water mark is a cross-check);
* the first call's compile time (T = 300), cold (empty numba cache) and cached, in
  fresh processes.

The table is KL-like (cost grows with the jump, (t - s)^2 / (1 + t), plus noise). All
DPs must return the same schedules; the script checks it. Times are wall-clock, the
median of ``--repeat`` runs of ``solve_schedules`` (validation included, compile
excluded); K = 32 on every thread and on one take turns, 3 x ``--repeat`` runs each, so
that both see the machine in the same state. Other processes on the machine slow every
DP, the threaded one most: the load average (``uptime``) before and after is recorded
with the numbers.

    python benchmarks/bench_dp.py [--quick] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import median_time, median_times  # noqa: E402

from ddpm_tools.core.dp import (  # noqa: E402
    DPSolution,
    solve_all_budgets,
    solve_schedules,
    solve_schedules_numpy,
    warm_up,
)

FIRST_CALL = (  # T = 300: the threaded kernel where numba has more than one thread
    "import time; t0 = time.perf_counter(); import numpy as np; "
    "from ddpm_tools.core.dp import solve_schedules; t1 = time.perf_counter(); "
    "prior = np.full(301, np.inf); prior[300] = 0.0; "
    "solve_schedules(np.ones((301, 301)), prior, [2]); "
    "print(time.perf_counter() - t1, t1 - t0)"
)


def kl_like_table(T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """L: [T+1, T+1], cost of t -> s growing with the jump; prior finite at T only."""
    n = T + 1
    L = np.random.default_rng(seed).random((n, n))
    L *= 0.01
    s = np.arange(n, dtype=np.float64)[:, None]
    t = np.arange(n, dtype=np.float64)[None, :]
    L += 0.05 * (t - s) ** 2 / (1.0 + t)
    prior = np.full(n, np.inf)
    prior[T] = 0.1
    return L, prior


def cubic_all_budgets(L: np.ndarray, prior: np.ndarray) -> list[DPSolution]:
    """All budgets the Analytic-DPM way (Bao et al. 2022, their ``vectorized_dp``, written
    anew): for k = 1..T, C[k, t] = min_{s < t} C[k-1, s] + L[s, t] as one [T+1, T+1]
    broadcast per k, O(T^3) time and a [T+1, T+1] back-pointer table; then one
    back-tracking per budget. Ties: the first argmin (the smallest s, then t)."""
    n = L.shape[0]
    Lm = np.where(np.triu(np.ones((n, n), dtype=bool), 1), L, np.inf)
    C = np.full((n, n), np.inf)
    C[0, 0] = 0.0
    D = np.zeros((n, n), dtype=np.int32)
    for k in range(1, n):
        M = C[k - 1][:, None] + Lm[:, k:]  # only t >= k can be reached in k steps
        D[k, k:] = M.argmin(axis=0)
        C[k, k:] = M.min(axis=0)
    out = []
    for K in range(1, n):
        total = C[K] + prior
        end = int(total.argmin())
        if total[end] == np.inf:
            continue
        tau = np.empty(K + 1, dtype=np.int64)
        tau[K] = end
        for k in range(K, 0, -1):
            tau[k - 1] = D[k, tau[k]]
        out.append(DPSolution(K, tau, float(total[end])))
    return out


def one_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with a single numba thread (the one-core kernel)."""
    def run() -> Any:
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(before)
    return run


def same(a: list, b: list) -> bool:
    return all(x.cost_nats == y.cost_nats and np.array_equal(x.timesteps, y.timesteps)
               for x, y in zip(a, b, strict=True))


def first_call_seconds() -> dict[str, float]:
    """Fresh processes: compile into an empty cache (cold), then load from it (cached)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = {}
        for label in ("cold", "cached"):
            res = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, check=True,
                                 capture_output=True, text=True)
            call, imp = map(float, res.stdout.split())
            out[f"first_call_{label}_s"] = call
            out[f"import_{label}_s"] = imp
    return out


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(L: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
    """Peak extra bytes while solving every budget, as a multiple of L.nbytes."""
    rss_before = _rss_kib("VmRSS")
    try:  # reset the resident-set high-water mark (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    tracemalloc.start()
    solve_all_budgets(L, prior)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = _rss_kib("VmHWM")
    rss_extra = (hwm - rss_before) * 1024 if hwm_ok and hwm and rss_before else None
    return {"L_bytes": L.nbytes, "traced_peak_bytes": peak,
            "traced_peak_over_L": peak / L.nbytes,
            "rss_peak_extra_bytes": rss_extra,
            "rss_peak_extra_over_L": None if rss_extra is None else rss_extra / L.nbytes}


def _case(case: str, ours: float, anchor: float | None, anchor_name: str, same: bool | None,
          target: str, ok: bool | None, **extra: Any) -> dict[str, Any]:
    return {"case": case, "ours_s": ours, "anchor": anchor_name, "anchor_s": anchor,
            "speedup": None if anchor is None else anchor / ours, "same": same,
            "target": target, "ok": ok, **extra}


def run(quick: bool, repeat: int) -> dict[str, Any]:
    T_big = 1000 if quick else 4000
    T_all = 300 if quick else 1000
    threads = numba.get_num_threads()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    cases = []
    compile_info = first_call_seconds()
    warm_up()  # load the kernels in this process
    one_thread(warm_up)()

    L, prior = kl_like_table(T_big)
    (fast, a), (one, c) = median_times(  # in turn, run by run: the same machine for both
        [lambda: solve_schedules(L, prior, [32]),
         one_thread(lambda: solve_schedules(L, prior, [32]))], 3 * repeat)
    slow, b = median_time(lambda: solve_schedules_numpy(L, prior, [32]), 1)
    big = not quick
    cases.append(_case(f"T={T_big} K=32, {threads} threads", fast, slow, "numpy DP",
                       same(a, b) and same(a, c), "<= 0.05 s" if big else "-",
                       fast <= 0.05 if big else None, threads=threads))
    cases.append(_case(f"T={T_big} K=32, 1 thread", one, slow, "numpy DP", same(c, b), "-",
                       None, threads=1))

    L1, p1 = kl_like_table(T_all)
    fast1, a = median_time(lambda: solve_all_budgets(L1, p1), repeat)
    cubic1, b = median_time(lambda: cubic_all_budgets(L1, p1), 1)
    cases.append(_case(f"T={T_all} all budgets", fast1, cubic1, "O(T^3) DP", same(a, b), "-",
                       None, threads=threads))
    if big:
        fast2, _ = median_time(lambda: solve_all_budgets(L, prior), max(1, repeat // 2))
        cubic2 = cubic1 * (T_big / T_all) ** 3
        cases.append(_case(f"T={T_big} all budgets", fast2, cubic2, "O(T^3) DP, extrapolated",
                           None, "<= 1.5 s", fast2 <= 1.5, threads=threads))
    memory = peak_memory(L, prior)
    memory["case"] = f"T={T_big} all budgets"
    memory["ok"] = memory["traced_peak_over_L"] < 2 and (
        memory["rss_peak_extra_over_L"] is None or memory["rss_peak_extra_over_L"] < 2)
    return {"machine": {"cpus": os.cpu_count(), "numba_threads": threads,
                        "python": platform.python_version(), "numpy": np.__version__,
                        "numba": numba.__version__, "load_average_start": load_start,
                        "load_average_end": os.getloadavg()
                        if hasattr(os, "getloadavg") else None},
            "quick": quick, "repeat": repeat, "cases": cases, "memory": memory,
            "compile": compile_info}


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measurement: what, ours, the anchor, ratio, target, met."""
    rows = [{"measured": c["case"], "ours": f"{c['ours_s']:.3f} s",
             "anchor": f"{c['anchor']} {c['anchor_s']:.3f} s",
             "ratio": f"{c['speedup']:.0f}x faster", "target": c["target"], "met": c["ok"]}
            for c in res["cases"]]
    m = res["memory"]
    rows.append({"measured": f"peak extra memory, {m['case']}",
                 "ours": f"{m['traced_peak_bytes'] / 2**20:.0f} MiB",
                 "anchor": f"L {m['L_bytes'] / 2**20:.0f} MiB",
                 "ratio": f"{m['traced_peak_over_L']:.2f}x L", "target": "< 2x L",
                 "met": m["ok"]})
    c = res["compile"]
    rows.append({"measured": "first call, fresh process (numba cache)",
                 "ours": f"{c['first_call_cached_s']:.2f} s",
                 "anchor": f"compile {c['first_call_cold_s']:.2f} s",
                 "ratio": f"{c['first_call_cold_s'] / c['first_call_cached_s']:.0f}x faster",
                 "target": "-", "met": None})
    return rows


def print_table(res: dict[str, Any]) -> None:
    rows = summary(res)
    keys = list(rows[0])
    cells = [keys] + [[{True: "yes", False: "NO", None: "-"}[r[k]] if k == "met" else str(r[k])
                       for k in keys] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    same_all = all(c["same"] is not False for c in res["cases"])
    print(f"\nsame schedules as the reference DPs: {'yes' if same_all else 'NO'}")
    print(f"machine: {res['machine']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (T = 1000 and 300) for a fast check")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs per timing (the median is kept)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    res = run(args.quick, max(1, args.repeat))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
