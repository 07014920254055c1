"""Benchmark the learned_range exponential sums of a cost table: moments vs direct.

A ``learned_range`` cost column t needs, per example, sum_d exp(-u_d delta_s) and
sum_d err2_d exp(-u_d delta_s) for every s < t (``core.expsum.learned_range_sums``).
The direct sum costs n * D * t exponentials per column; the moment path
O(n * (D + t) * p). Both run here on the same inputs (u uniform on [0, 1], the widest
range a network's v takes; delta from a cosine schedule of the same T) for a few columns
t, each timed as the median CPU seconds of ``--repeat`` runs on one torch thread (robust
to the other processes of a shared machine; the direct sum is run once, it is slow);
the whole table's time, sum over t = 2..T, is extrapolated from a least-squares line
a + b * t through the measured columns (both costs are linear in t). The largest
relative difference between the two paths is checked in the same run (must be < 1e-10).

Configurations: D = 3072 (32x32x3), T = 1000, n = 64 examples; D = 12288 (64x64x3),
T = 4000, n = 64, from a few columns.

Then the whole ``learned_range`` cost table against its floor, the same network calls
alone (issue 17's target: at most 1.15x at D = 3072, T = 1000): an improved-diffusion
U-Net with learned sigmas (as in ``bench_image.py``: width 32, one residual block per
level, its initialisation, read by ``import-checkpoint``), random images, 4 examples
per column in one batch, one torch thread, CPU seconds. At D = 3072, T = 1000 both are
measured whole: ``build_cost_table`` (everything, the prior and the file included) and
T plain calls under ``torch.inference_mode``, one after each column at the same t,
timed apart; at D = 12288 (64x64x3), T = 4000 from a few columns t (one
``column_costs`` with its mean and standard error, against one plain call at t), the
table extrapolated by a line a + b t and the floor by T times the mean call.

    python benchmarks/bench_costs.py [--quick] [--repeat 3] [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    base_parser,
    finish,
    machine,
    median_time,
    print_table,
    timed,
    torch_threads,
    yes_no,
)
from bench_image import make_set, random_images, unet_flags  # noqa: E402

from ddpm_tools.core.expsum import learned_range_sums, plan  # noqa: E402
from ddpm_tools.core.noise_schedule import make_schedule  # noqa: E402
from ddpm_tools.core.stats import mean_and_se  # noqa: E402
from ddpm_tools.costs.build import build_cost_table  # noqa: E402
from ddpm_tools.costs.estimate import (  # noqa: E402
    COST_STREAM,
    CostSettings,
    column_costs,
    select_examples,
)
from ddpm_tools.data import load_data  # noqa: E402
from ddpm_tools.sets.denoiser import Denoiser  # noqa: E402

TARGET_RTOL = 1e-10
TARGET_RATIO = 1.15  # whole learned_range table / its network calls, D = 3072, T = 1000


@dataclass(frozen=True)
class TableCase:
    """A learned_range cost table of an improved-diffusion U-Net against its network calls."""

    image_size: int  # D = 3 * image_size^2
    T: int
    samples: int  # examples per column, one batch
    columns: tuple[int, ...] = ()  # the columns t measured; empty: the whole table
    target: bool = False  # the 1.15x target applies


TABLES = (TableCase(32, 1000, 4, target=True), TableCase(64, 4000, 4, (500, 1500, 2500, 3500)))
QUICK_TABLES = (TableCase(32, 30, 2, target=True), TableCase(32, 60, 2, (20, 50)))


def column_inputs(T: int, t: int, n: int, D: int, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, err2: [n, D]; delta_s = log((1 - alpha_bar_t) / (1 - alpha_bar_s)), s = 1..t-1."""
    g = torch.Generator().manual_seed(seed + t)
    u = torch.rand(n, D, generator=g, dtype=torch.float64)
    err2 = torch.rand(n, D, generator=g, dtype=torch.float64) ** 2
    lab = make_schedule("cosine", T).log_alpha_bar
    log_one_minus = np.log(-np.expm1(lab[1 : t + 1]))
    delta = torch.as_tensor(log_one_minus[-1] - log_one_minus[:-1])  # [t-1] >= 0
    return u, err2, delta


def median_seconds(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(median CPU seconds of this process over ``repeat`` calls, the last result)."""
    return median_time(fn, repeat, time.process_time)


def whole_table(ts: list[int], secs: list[float], T: int, first: int = 2) -> float:
    """sum_{t=first..T} (a + b t) for the least-squares line through (ts, secs)."""
    b, a = np.polyfit(np.asarray(ts, float), np.asarray(secs), 1) if len(ts) > 1 else (
        secs[0] / ts[0], 0.0)
    t_all = np.arange(first, T + 1, dtype=float)
    return float(np.sum(np.maximum(a + b * t_all, 0.0)))


def run_config(D: int, T: int, n: int, fast_ts: list[int], direct_ts: list[int],
               repeat: int) -> dict[str, Any]:
    cols = []
    max_err = 0.0
    for t in sorted(set(fast_ts) | set(direct_ts)):
        u, err2, delta = column_inputs(T, t, n, D)
        how = plan(u, delta)
        col: dict[str, Any] = {"t": t, "pieces": how.pieces, "points": how.points,
                               "fast_path": how.fast}
        def sums(method: str, u: Any = u, err2: Any = err2, delta: Any = delta) -> Any:
            return learned_range_sums(u, err2, delta, method=method)  # type: ignore[arg-type]

        if t in fast_ts:
            col["fast_s"], fast = median_seconds(lambda: sums("fast"), repeat)
        if t in direct_ts:
            col["direct_s"], direct = median_seconds(lambda: sums("direct"), 1)
            if t in fast_ts:
                err = max(float(((f - d).abs() / d.abs()).max())
                          for f, d in zip(fast, direct, strict=True))
                col["max_rel_err"] = err
                max_err = max(max_err, err)
        cols.append(col)
    f_ts = [c["t"] for c in cols if "fast_s" in c]
    d_ts = [c["t"] for c in cols if "direct_s" in c]
    fast_total = whole_table(f_ts, [c["fast_s"] for c in cols if "fast_s" in c], T)
    direct_total = whole_table(d_ts, [c["direct_s"] for c in cols if "direct_s" in c], T)
    return {"D": D, "T": T, "n": n, "columns": cols, "fast_table_s": fast_total,
            "direct_table_s": direct_total, "speedup": direct_total / fast_total,
            "max_rel_err": max_err, "ok": max_err < TARGET_RTOL,
            "pieces": cols[-1]["pieces"], "points": cols[-1]["points"]}


def table_case(case: TableCase, tmp: Path, repeat: int) -> dict[str, Any]:
    """CPU seconds of the cost table and of its network calls alone (see the docstring)."""
    cset = make_set(tmp, unet_flags(case.image_size, case.T))
    n, size = case.samples, case.image_size
    random_images(tmp / "img.npz", size, n, 2)
    train = load_data(f"npz:{tmp / 'img.npz'}", "train")
    net = cset.load_member(0)
    shape = tuple(cset.manifest.data.shape)

    def call(t: int) -> None:
        with torch.inference_mode():
            net(torch.randn((n, *shape)), torch.full((n,), t))

    call(1)  # warm-up
    out: dict[str, Any] = {"D": int(np.prod(shape)), "T": case.T, "samples": n,
                           "columns": list(case.columns), "target": case.target}
    if not case.columns:
        # the floor interleaved with the table: after each column t, the plain call at t,
        # timed apart and taken out of the table's time (on a shared machine the speed of
        # a core drifts by 10-20 % within seconds; side by side, both see the same drift)
        floor = [0.0, 0.0]

        def after_column(task: str, done: int, total: int, **info: float) -> None:
            if task.startswith("cost table"):
                wall, cpu = time.perf_counter(), time.process_time()
                call(done)  # columns t = 1..T in order: the done-th column is t = done
                floor[0] += time.perf_counter() - wall
                floor[1] += time.process_time() - cpu

        both, _ = timed(lambda: build_cost_table(cset, train, tmp / "c.safetensors",
                                                 CostSettings(samples=n, batch_size=n),
                                                 progress=after_column))
        out.update(table_s=both.cpu - floor[1], floor_s=floor[1],
                   table_wall_s=both.wall - floor[0], floor_wall_s=floor[0])
    else:
        den = Denoiser(cset)
        x0 = select_examples(train, n, 0)

        def column(t: int) -> None:
            res = column_costs(den, x0, t, np.arange(t), 0, COST_STREAM, n)
            torch.stack(mean_and_se(res.costs)).cpu()

        calls, cols = [], []
        for t in case.columns:  # side by side, so that both see the same machine
            calls.append(median_seconds(partial(call, t), repeat)[0])
            cols.append(median_seconds(partial(column, t), repeat)[0])
        out.update(table_s=whole_table(list(case.columns), cols, case.T, first=1),
                   floor_s=float(np.mean(calls)) * case.T, column_s=cols, call_s=calls)
    out["ratio"] = out["table_s"] / out["floor_s"]
    out["ok"] = out["ratio"] <= TARGET_RATIO if case.target else None
    return out


def run(quick: bool, repeat: int) -> dict[str, Any]:
    res: dict[str, Any] = {"benchmark": "costs", "machine": machine(),
                           "settings": {"quick": quick, "repeat": repeat, "torch_threads": 1}}
    if quick:
        configs = [(256, 200, 8, [50, 100, 200], [50, 200])]
    else:
        configs = [(3072, 1000, 64, [250, 500, 1000], [250, 500, 1000]),
                   (12288, 4000, 64, [1000, 2000, 4000], [250, 500, 1000])]
    with torch_threads(1):
        res["configs"] = [run_config(D, T, n, f, d, repeat) for D, T, n, f, d in configs]
        res["tables"] = []
        for case in QUICK_TABLES if quick else TABLES:
            with tempfile.TemporaryDirectory(prefix="ddpm-bench-costs-") as d:
                res["tables"].append(table_case(case, Path(d), repeat))
    return res


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: what, ours, the anchor, ratio, target, met."""
    return [{"measured": f"learned_range sums, whole table: D={c['D']}, T={c['T']}, "
                         f"n={c['n']} (q={c['pieces']} x p={c['points']} moments)",
             "ours": f"{c['fast_table_s']:.1f} s (extrap.)",
             "anchor": f"direct sum {c['direct_table_s']:.0f} s (extrap.)",
             "ratio": f"{c['speedup']:.0f}x faster",
             "target": f"max rel. diff {c['max_rel_err']:.1e} < 1e-10", "met": c["ok"]}
            for c in res["configs"]] + [
        {"measured": f"learned_range cost table vs its network calls: U-Net, D={c['D']}, "
                     f"T={c['T']}, {c['samples']} examples per column"
                     + (" (whole)" if not c["columns"] else
                        f" (from columns t={', '.join(map(str, c['columns']))})"),
         "ours": f"{c['table_s']:.1f} s" + (" (extrap.)" if c["columns"] else ""),
         "anchor": f"network calls alone {c['floor_s']:.1f} s"
                   + (" (extrap.)" if c["columns"] else ""),
         "ratio": f"{c['ratio']:.2f}x", "target": f"<= {TARGET_RATIO}x" if c["target"] else "-",
         "met": c["ok"]}
        for c in res.get("tables", [])]


def print_human(res: dict[str, Any]) -> None:
    rows = summary(res)
    print_table(list(rows[0]), [[*list(r.values())[:-1], yes_no(r["met"])] for r in rows])
    print("\nper column (seconds, one call for every s < t):")
    for c in res["configs"]:
        for col in c["columns"]:
            print(f"  D={c['D']} T={c['T']} t={col['t']}: moments "
                  f"{col.get('fast_s', float('nan')):.3f}, direct "
                  f"{col.get('direct_s', float('nan')):.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table (or ``--json``), return the results."""
    parser = base_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median kept)")
    args = parser.parse_args(argv)
    return finish(run(args.quick, max(1, args.repeat)), args.json, print_human)


if __name__ == "__main__":
    main()
    sys.exit(0)
