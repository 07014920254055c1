"""Run every benchmark and write ``benchmarks/results.md`` and ``benchmarks/results.json``.

Each benchmark runs in its own process (``python benchmarks/bench_X.py --json``), so one
cannot warm another's caches; the machine and the load before and after are recorded
with the numbers. Usage:

    python benchmarks/run_all.py [--quick] [--only dp,train] [--out benchmarks]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import load_average, machine  # noqa: E402

BENCHMARKS = {  # name -> (script, what it compares)
    "dp": ("bench_dp.py", "numba DP vs the plain numpy DP"),
    "train": ("bench_train.py", "members/hour with 1 vs 2 workers; one member vs the "
                                "single-network baseline"),
    "eval": ("bench_eval.py", "eval-bpd vs a calc_bpd_loop-style per-step loop; K-step cost"),
    "sets": ("bench_sets.py", "single network vs interval sets vs multidecoder at equal "
                              "compute"),
}


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """One benchmark's JSON result (or its error), with its wall-clock time."""
    script = HERE / BENCHMARKS[name][0]
    if not script.exists():
        return {"error": f"{script.name} is missing"}
    cmd = [sys.executable, str(script), "--json"] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
                "seconds": seconds}
    out = proc.stdout
    return {"result": json.loads(out[out.index("{"):]), "seconds": seconds}


def _rows(res: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a result to (key, value) rows for the markdown file (numbers rounded)."""
    rows: list[tuple[str, str]] = []
    if isinstance(res, dict):
        for k, v in res.items():
            if k == "machine":
                continue
            rows += _rows(v, f"{prefix}{k}.")
    elif isinstance(res, list):
        for i, v in enumerate(res):
            rows += _rows(v, f"{prefix}{i}.")
    else:
        value = f"{res:.4g}" if isinstance(res, float) else str(res)
        rows.append((prefix.rstrip("."), value))
    return rows


def write_markdown(path: Path, results: dict[str, Any], info: dict[str, Any]) -> None:
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/run_all.py{' --quick' if info['quick'] else ''}`"
             f" on {info['date']}.", "",
             f"Machine: {info['machine']['cpus']} CPUs, {info['machine']['platform']}, "
             f"Python {info['machine']['python']}, torch {info['machine']['torch']} "
             f"({info['machine']['torch_threads']} threads); load average before "
             f"{info['load_start']}, after {info['load_end']}.", ""]
    for name, r in results.items():
        lines += [f"## {name}: {BENCHMARKS[name][1]}", ""]
        if "error" in r:
            lines += [f"Not run: {r['error']}", ""]
            continue
        lines += [f"Wall-clock {r['seconds']:.0f} s.", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in _rows(r["result"])]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of " + ", ".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.md/json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    info = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(), "load_start": load_average()}
    results = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_one(name, args.quick)
    info["load_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "results": results},
                                                      indent=2) + "\n")
    write_markdown(args.out / "results.md", results, info)
    print(f"wrote {args.out / 'results.md'} and results.json", file=sys.stderr)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
