"""Small helpers shared by the benchmark scripts: the machine, tables, ``--json`` output.

Every benchmark prints a table by default and one JSON object with ``--json``, and
records the machine it ran on (CPU count, torch version and threads, platform, the load
average before and after) so that a number is never read without its conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

R = TypeVar("R")


def load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages (None where the OS has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (call it before the measurements start)."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_start": load_average(),
    }


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: ``--quick`` and ``--json``."""
    text = doc or ""
    parser = argparse.ArgumentParser(description=text.splitlines()[0] if text else None)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes that run in seconds (a smoke test, not a measurement)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Timing:
    """How long one call took."""

    wall: float  # wall-clock seconds
    cpu: float  # CPU seconds of this process (all its threads; not its child processes)


def timed(fn: Callable[[], R]) -> tuple[Timing, R]:
    """(timing, result) of one call.

    On a shared machine the wall clock also measures the other processes; the CPU time
    of a single-threaded call is the better measure of its own cost.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu), out


def median_time(fn: Callable[[], R], repeat: int,
                clock: Callable[[], float] = time.perf_counter) -> tuple[float, R]:
    """(median seconds of ``repeat`` calls by ``clock``, the last call's result).

    ``time.process_time`` gives the CPU seconds of this process (robust on a shared
    machine for single-threaded work); the default is the wall clock.
    """
    times: list[float] = []
    out = None
    for _ in range(max(1, repeat)):
        start = clock()
        out = fn()
        times.append(clock() - start)
    times.sort()
    mid = len(times) // 2
    med = times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return med, out  # type: ignore[return-value]


def median_times(fns: Sequence[Callable[[], R]], repeat: int,
                 clock: Callable[[], float] = time.perf_counter) -> list[tuple[float, R]]:
    """:func:`median_time` for several functions, called in turn round by round, so that
    each sees the machine in the same state (a core's speed here drifts within minutes)."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[R | None] = [None] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            start = clock()
            outs[i] = fn()
            times[i].append(clock() - start)
    return [(statistics.median(t), o) for t, o in zip(times, outs, strict=True)]  # type: ignore[misc]


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Left-aligned columns, two spaces apart; cells are printed with ``str``."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def yes_no(ok: bool | None) -> str:
    """A target verdict for a table cell."""
    return "-" if ok is None else ("yes" if ok else "NO")


def describe_machine(res: dict[str, Any]) -> str:
    """One line: CPUs, torch and its threads, the platform, the load before and after."""
    m = res["machine"]

    def load(x: list[float] | None) -> str:
        return "n/a" if x is None else "/".join(f"{v:.2f}" for v in x)

    return (f"machine: {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads by "
            f"default), Python {m['python']}, {m['platform']}; load average (1/5/15 min) "
            f"{load(m['load_average_start'])} before, {load(m['load_average_end'])} after")


def finish(res: dict[str, Any], as_json: bool, print_human: Callable[[dict[str, Any]], None]
           ) -> dict[str, Any]:
    """Record the load at the end, print JSON or the human table, return ``res``."""
    res["machine"]["load_average_end"] = load_average()
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
        print(describe_machine(res))
    return res
