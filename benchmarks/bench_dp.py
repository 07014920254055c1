"""Benchmark the DP kernel against the straightforward numpy DP, in the same run.

Cases (issue 4, part 3; targets for a 2-core machine):

* T = 4000, K = 32: <= 0.15 s and >= 20x faster than numpy;
* every budget 1..T at T = 1000: <= 0.5 s; at T = 4000: <= 20 s (the numpy DP is not run
  there: it is extrapolated from its K = 32 time, since it does one full [T+1, T+1] pass
  per k, so its time is linear in K);
* peak extra memory for T = 4000, every budget: < 2x the size of L (tracemalloc sees
  every array the DP allocates; the resident-set high-water mark is a cross-check);
* the first call's compile time, cold (empty numba cache) and cached, in fresh processes.

The table is KL-like (cost grows with the jump, (t - s)^2 / (1 + t), plus noise). Both
DPs must return the same schedules; the script checks it. Times are wall-clock, the best
of ``--repeat`` runs of ``solve_schedules`` (validation included, compile excluded); both
DPs run on one core. Other processes on the machine slow both; the ratio is robust.

    python benchmarks/bench_dp.py [--quick] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from ddpm_tools.core.dp import solve_all_budgets, solve_schedules, solve_schedules_numpy, warm_up

FIRST_CALL = (
    "import time; t0 = time.perf_counter(); import numpy as np; "
    "from ddpm_tools.core.dp import solve_schedules; t1 = time.perf_counter(); "
    "solve_schedules(np.ones((5, 5)), np.array([9, 9, 9, 9, 0.0]), [2]); "
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


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


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


def run(quick: bool, repeat: int) -> dict[str, Any]:
    T_big = 1000 if quick else 4000
    T_all = 300 if quick else 1000
    cases = []
    compile_info = first_call_seconds()
    warm_up()  # load the kernels in this process

    L, prior = kl_like_table(T_big)
    fast, a = best_time(lambda: solve_schedules(L, prior, [32]), repeat)
    slow, b = best_time(lambda: solve_schedules_numpy(L, prior, [32]), 1)
    cases.append({"case": f"T={T_big} K=32", "numba_s": fast, "numpy_s": slow,
                  "numpy_extrapolated": False, "speedup": slow / fast, "same": same(a, b),
                  "target": "<= 0.15 s, >= 20x", "ok": fast <= 0.15 and slow / fast >= 20})
    if quick:  # the targets are for T = 4000 and 1000
        cases[-1].update(target="-", ok=None)
    numpy_per_k = slow / 32

    L1, p1 = kl_like_table(T_all)
    fast1, a = best_time(lambda: solve_all_budgets(L1, p1), repeat)
    slow1, b = best_time(lambda: solve_schedules_numpy(L1, p1, range(1, T_all + 1)), 1)
    cases.append({"case": f"T={T_all} all budgets", "numba_s": fast1, "numpy_s": slow1,
                  "numpy_extrapolated": False, "speedup": slow1 / fast1, "same": same(a, b),
                  "target": "-" if quick else "<= 0.5 s", "ok": None if quick else fast1 <= 0.5})

    if not quick:
        fast2, _ = best_time(lambda: solve_all_budgets(L, prior), 1)
        slow2 = numpy_per_k * T_big
        cases.append({"case": f"T={T_big} all budgets", "numba_s": fast2, "numpy_s": slow2,
                      "numpy_extrapolated": True, "speedup": slow2 / fast2, "same": None,
                      "target": "<= 20 s", "ok": fast2 <= 20})
    memory = peak_memory(L, prior)
    memory["case"] = f"T={T_big} all budgets"
    memory["ok"] = memory["traced_peak_over_L"] < 2 and (
        memory["rss_peak_extra_over_L"] is None or memory["rss_peak_extra_over_L"] < 2)
    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "numpy": np.__version__, "numba": numba.__version__,
                        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
            "quick": quick, "repeat": repeat, "cases": cases, "memory": memory,
            "compile": compile_info}


def print_table(res: dict[str, Any]) -> None:
    rows = [("case", "numba DP s", "numpy DP s", "speed-up", "same", "target", "ok")]
    for c in res["cases"]:
        numpy_s = f"{c['numpy_s']:.3f}" + (" (extrap.)" if c["numpy_extrapolated"] else "")
        rows.append((c["case"], f"{c['numba_s']:.3f}", numpy_s, f"{c['speedup']:.0f}x",
                     "-" if c["same"] is None else str(c["same"]), c["target"],
                     {True: "yes", False: "NO", None: "-"}[c["ok"]]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    m = res["memory"]
    rss = m["rss_peak_extra_over_L"]
    print(f"\npeak extra memory, {m['case']}: traced {m['traced_peak_over_L']:.2f}x L "
          f"({m['traced_peak_bytes'] / 2**20:.0f} MiB; L = {m['L_bytes'] / 2**20:.0f} MiB)"
          + ("" if rss is None else f", resident {rss:.2f}x L")
          + f"; target < 2x L: {'yes' if m['ok'] else 'NO'}")
    c = res["compile"]
    print(f"first call (tiny table, fresh process): {c['first_call_cold_s']:.2f} s with an "
          f"empty numba cache (compile), {c['first_call_cached_s']:.2f} s from the cache")
    print(f"machine: {res['machine']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (T = 1000 and 300) for a fast check")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (best kept)")
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
