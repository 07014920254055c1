"""``ddpm-tools demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import console, rich_progress
from ddpm_tools.demo import DemoConfig, run_demo


@app.command("demo")
def demo_cmd(
    quick: Annotated[bool, typer.Option(help="Smaller run (about 3 minutes on 2 cores).")
                     ] = False,
    out: Annotated[Path, typer.Option(help="Report folder (reused by a rerun).")] = Path(
        "report"),
    workers: Annotated[int, typer.Option(min=1, help="Training processes.")] = max(
        1, os.cpu_count() or 1),
    seed: Annotated[int, typer.Option(help="Seed of every stage.")] = 0,
    variances: Annotated[bool, typer.Option(
        "--variances", help="Also compare the reverse variances (trained, fixed_small, "
                            "fixed_large, analytic, mse) on the digits sets, with digits "
                            "sets trained with fixed_large too (adds several minutes).")
    ] = False,
) -> None:
    """Train, build cost tables, optimize, evaluate and sample on digits and 8gaussians;
    write OUT/report.md with tables and pictures."""
    with rich_progress() as progress:
        path = run_demo(DemoConfig(quick=quick, seed=seed, workers=workers,
                                           variances=variances), out, progress)
    console.print(f"report written to {path}")
