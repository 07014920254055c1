"""Run every benchmark and write ``benchmarks/results.md`` and ``benchmarks/results.json``.

Each benchmark runs in its own process (``python benchmarks/bench_X.py --json``), so one
cannot warm another's caches; the date, the machine and the load before and after are
recorded with each benchmark's numbers. ``--only`` reruns the named benchmarks and keeps
the other benchmarks' earlier results (each still with its own date); ``--markdown-only``
rewrites results.md from results.json without running anything.

results.md holds one short table per benchmark (what was measured, ours, the anchor or
floor, ratio, target, met), made by the benchmark script's ``summary(result)``; every
detail stays in results.json. Usage:

    python benchmarks/run_all.py [--quick] [--only dp costs] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import load_average, machine  # noqa: E402

from ddpm_tools.io.files import atomic_write_text  # noqa: E402

BENCHMARKS = {  # name -> (script, what it compares)
    "dp": ("bench_dp.py", "the numba DP vs the plain numpy DP and an O(T^3) all-budgets DP"),
    "costs": ("bench_costs.py", "learned_range exponential sums of a cost table: moments vs "
                                "the direct sum"),
    "train": ("bench_train.py", "members/hour with 1 vs 2 workers; one member vs the "
                                "single-network baseline"),
    "eval": ("bench_eval.py", "eval-bpd vs a calc_bpd_loop-style per-step loop; K-step cost"),
    "sets": ("bench_sets.py", "single network vs interval sets vs multidecoder at equal "
                              "compute"),
    "image": ("bench_image.py", "cost table of an imported 32x32 improved-diffusion U-Net vs "
                                "the same plain network calls"),
}


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """One benchmark's JSON result (or its error), with its date, wall-clock time and the
    load average before and after."""
    script = HERE / BENCHMARKS[name][0]
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "quick": quick, "load_start": load_average()}
    if not script.exists():
        return {**info, "error": f"{script.name} is missing"}
    cmd = [sys.executable, str(script), "--json"] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    info.update(seconds=time.perf_counter() - t0, load_end=load_average())
    if proc.returncode != 0:
        return {**info, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr
                else "failed"}
    out = proc.stdout
    return {**info, "result": json.loads(out[out.index("{"):])}


def merge_previous(path: Path, results: dict[str, Any], info: dict[str, Any]
                   ) -> dict[str, Any]:
    """``results`` plus the earlier results in ``path`` of the benchmarks not rerun.

    Results written before each carried its own date get the file's date and load."""
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    merged = {}
    for name in BENCHMARKS:
        if name in results:
            merged[name] = results[name]
        elif name in old.get("results", {}):
            prev = old["results"][name]
            if "date" not in prev:
                keep = ("date", "quick", "load_start", "load_end")
                prev = {**{k: old["info"].get(k) for k in keep}, **prev}
            merged[name] = prev
    return merged


COLUMNS = ("measured", "ours", "anchor", "ratio", "target", "met")
HEADER = ("what was measured", "ours", "anchor or floor", "ratio", "target", "met")


def summary_rows(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``summary(result)`` from the benchmark's own script (one row saying so
    when a result was written by an older version of the script)."""
    module = importlib.import_module(Path(BENCHMARKS[name][0]).stem)
    try:
        return list(module.summary(result))
    except (AttributeError, KeyError, TypeError, IndexError, StopIteration):
        return [{"measured": "this result predates the script's summary; rerun "
                             f"`run_all.py --only {name}`", "ours": "-", "anchor": "-",
                 "ratio": "-", "target": "-", "met": None}]


def _cell(key: str, value: Any) -> str:
    if key == "met":
        return {True: "yes", False: "**no**", None: "-"}[value]
    return str(value).replace("|", "\\|")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(k, r.get(k, "-")) for k in COLUMNS) + " |"
              for r in rows]
    return lines


def _load(x: list[float] | None) -> str:
    return "n/a" if x is None else "/".join(f"{v:.2f}" for v in x)


def write_markdown(path: Path, results: dict[str, Any], info: dict[str, Any]) -> None:
    m = info["machine"]
    lines = ["# Benchmark results", "",
             "Written by `python benchmarks/run_all.py`; each section says when its benchmark "
             "ran, and the load average (1/5/15 min) before and after it; the details of "
             "every number are in `results.json`.", "",
             f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, torch "
             f"{m['torch']} ({m['torch_threads']} threads).", ""]
    for name, r in results.items():
        lines += [f"## {name}: {BENCHMARKS[name][1]}", ""]
        if "error" in r:
            lines += [f"Not run: {r['error']}", ""]
            continue
        lines += [f"Run {r['date']}{' (--quick)' if r.get('quick') else ''}; wall-clock "
                  f"{r['seconds']:.0f} s; load average {_load(r.get('load_start'))} before, "
                  f"{_load(r.get('load_end'))} after.", ""]
        lines += _table(summary_rows(name, r["result"]))
        lines += ["", f"Details: `results.json`, `results.{name}`.", ""]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--only", nargs="+", default=list(BENCHMARKS),
                        help="the benchmarks to run (names, spaces or commas between): "
                             + ", ".join(BENCHMARKS))
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite results.md from results.json, run nothing")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.md/json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        saved = json.loads((args.out / "results.json").read_text())
        write_markdown(args.out / "results.md", saved["results"], saved["info"])
        print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
        return 0
    names = [n.strip() for arg in args.only for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(name, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    merged = merge_previous(args.out / "results.json", results, info)
    atomic_write_text(args.out / "results.json",
                      json.dumps({"info": info, "results": merged}, indent=2) + "\n")
    write_markdown(args.out / "results.md", merged, info)
    print(f"wrote {args.out / 'results.md'} and results.json", file=sys.stderr)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
