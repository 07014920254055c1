"""Shared CLI pieces: consoles, option types, JSON output, rich progress."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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

from ddpm_tools.device import is_main_process, rank_group, resolve_device, torchrun_ranks
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.calls import PRECISION_HELP

console = Console()
err_console = Console(stderr=True)

SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same numbers.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _device(name: str) -> str:
    """Parses --device: ``auto`` becomes the device it picks (cuda or cpu)."""
    return str(resolve_device(name))


DeviceOpt = Annotated[str, typer.Option(
    "--device", help="auto (CUDA if available), cpu, cuda or cuda:N; under torchrun cuda is "
                     "each rank's own GPU.", callback=_device)]
SetOpt = Annotated[Path, typer.Option("--set", help="Checkpoint set folder.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help=PRECISION_HELP)]


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


class _RichProgress:
    """A :class:`ProgressFn` drawing one rich bar per task label; ``warn`` prints one
    yellow line on stderr above the bars."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int, **info: float) -> None:
        text = "  ".join(f"{k}={v:.4g}" for k, v in info.items())
        if task not in self.tasks:
            if not self.tasks:  # the display starts with the first task
                self.bar.start()
            self.tasks[task] = self.bar.add_task(task, total=total, info=text)
        self.bar.update(self.tasks[task], completed=done, total=total, info=text)

    def warn(self, message: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)


@contextmanager
def rich_progress(enabled: bool = True) -> Iterator[ProgressFn]:
    """A :class:`ProgressFn` drawing one rich bar per task label on stderr. The display
    starts with the first task, so a command that fails before any work prints only
    its error."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=err_console, disable=not enabled)
    progress = _RichProgress(bar)
    try:
        yield progress
    finally:
        if progress.tasks:
            bar.stop()


@contextmanager
def rank_progress(json_out: bool) -> Iterator[ProgressFn]:
    """:func:`rich_progress` for a command that may run under torchrun: the ranks share
    one gloo group for the whole command and only rank 0 draws bars."""
    with rank_group(torchrun_ranks()), \
            rich_progress(enabled=not json_out and is_main_process()) as progress:
        yield progress


def fmt(x: float, digits: int = 4) -> str:
    """A float for tables: fixed digits, 'inf' for infinities."""
    if not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    return f"{x:.{digits}f}"


def fmt_se(x: float, se: float, digits: int = 4) -> str:
    """'value ± se' for tables."""
    return f"{fmt(x, digits)} ± {fmt(se, digits)}"
