"""Shared CLI pieces: consoles, option types, JSON output, rich progress."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ddpm_tools.progress import ProgressFn

console = Console()
err_console = Console(stderr=True)

SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same numbers.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
VARIANCE_HELP = ("Reverse variance of the steps: trained (the set's own), fixed_small, "
                 "fixed_large, analytic (Bao et al. 2022) or mse (the train-split x0 error); "
                 "analytic and mse are fitted on the set's train-split cost table.")
VarianceOpt = Annotated[str, typer.Option("--variance", help=VARIANCE_HELP)]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")
]


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null-free strings 'inf'/'nan'."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON on stdout (plain, not rich-highlighted)."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")
    sys.stdout.flush()


@contextmanager
def rich_progress(enabled: bool = True) -> Iterator[ProgressFn]:
    """A :class:`ProgressFn` drawing one rich bar per task label on stderr."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=not enabled) as bar:
        tasks: dict[str, Any] = {}

        def update(task: str, done: int, total: int, **info: float) -> None:
            text = "  ".join(f"{k}={v:.4g}" for k, v in info.items())
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total, info=text)
            bar.update(tasks[task], completed=done, total=total, info=text)

        yield update


def fmt(x: float, digits: int = 4) -> str:
    """A float for tables: fixed digits, 'inf' for infinities."""
    if not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:.{digits}f}"


def fmt_se(x: float, se: float, digits: int = 4) -> str:
    """'value ± se' for tables."""
    return f"{fmt(x, digits)} ± {fmt(se, digits)}"
