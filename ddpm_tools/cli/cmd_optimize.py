"""``ddpm-tools optimize-schedule``: exact DP schedules from a cost table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import DeviceOpt, JsonOpt, console, fmt, print_json, rich_progress
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.schedules.optimize import OptimizeResult
from ddpm_tools.schedules.run import ScheduleRun, optimize_schedules

SHOWN_TIMESTEPS = 10  # longer schedules are shortened in the table


@app.command("optimize-schedule")
def optimize_schedule_cmd(
    costs: Annotated[Path | None, typer.Option(
        help="Cost table (.safetensors) written by cost-table.")] = None,
    budget: Annotated[list[int] | None, typer.Option(
        "--budget", help="Steps K (network calls per sample); repeat for several budgets.")
    ] = None,
    all_budgets: Annotated[bool, typer.Option(
        "--all-budgets", help="Every budget from 1 to the most steps the table allows.")
    ] = False,
    out: Annotated[Path | None, typer.Option(
        help="Folder for one schedule file per budget, schedule_K{budget}.json.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Draw predicted bits/dim against K for DP, even and quadratic strides "
             "(.png, .pdf or .svg; needs the plot extra).")] = None,
    set_dir: Annotated[Path | None, typer.Option(
        "--set", help="Instead of --costs: the set whose train-split table is used (built "
                      "and cached next to the set when missing or stale).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Data the set was trained on, with --set.")] = None,
    samples: Annotated[int, typer.Option(
        min=2, help="With --set: train examples behind the table.")] = 512,
    seed: Annotated[int, typer.Option(help="With --set: the table's examples and noise.")] = 0,
    truncate: Annotated[bool, typer.Option(
        "--truncate", help="Let the DP also choose the start time among the set's auxiliary "
                           "priors (train-prior); reports the untruncated optimum next to it. "
                           "Default: every schedule starts at T.")] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Find the ELBO-optimal K-step schedule exactly (dynamic program over the cost table)
    for each budget K, next to the even and quadratic strides. Units: bits/dim; the JSON
    also gives nats per example."""
    with rich_progress(enabled=not json_out) as progress:
        run = optimize_schedules(budget or [], all_budgets=all_budgets, costs=costs,
                                 set_dir=set_dir, data=data,
                                 settings=CostSettings(samples=samples, seed=seed),
                                 truncate=truncate, out=out, plot=plot, device=device,
                                 progress=progress)
    _print_run(run, out, json_out)


def _print_run(run: ScheduleRun, out: Path | None, json_out: bool) -> None:
    if json_out:
        print_json(_to_json(run.result))
        return
    _print_table(run.result, run.costs)
    if run.written:
        console.print(f"wrote {len(run.written)} schedule file(s) to {out}")
    if run.plot is not None:
        console.print(f"wrote plot {run.plot}")


def _to_json(result: OptimizeResult) -> dict[str, Any]:
    return {
        "T": result.T,
        "dims": result.dims,
        "solve_seconds": result.solve_seconds,
        "schedules": [
            {"budget": r.schedule.budget,
             "timesteps": [int(t) for t in r.schedule.timesteps],
             "predicted_nats": r.predicted_nats,
             "predicted_bpd": r.schedule.predicted_bpd,
             "even_bpd": r.even_bpd,
             "quadratic_bpd": r.quadratic_bpd,
             **({"start": r.start, "untruncated_bpd": r.untruncated_bpd,
                 "untruncated_timesteps": None if r.untruncated_timesteps is None
                 else [int(t) for t in r.untruncated_timesteps]} if result.truncate else {})}
            for r in result.results
        ],
    }


def _print_table(result: OptimizeResult, costs: Path) -> None:
    table = Table(title=f"{costs}: T = {result.T}, D = {result.dims}; DP solved in "
                        f"{result.solve_seconds:.3f} s (predicted bits/dim, lower is better)")
    cols = ["K", "DP bits/dim"]
    if result.truncate:
        cols += ["start", "from T bits/dim"]
    for col in (*cols, "even bits/dim", "quadratic bits/dim"):
        table.add_column(col, justify="right")
    table.add_column("timesteps (DP)")
    for r in result.results:
        extra = [str(r.start), _bpd(r.untruncated_bpd)] if result.truncate else []
        table.add_row(str(r.schedule.budget), _bpd(r.schedule.predicted_bpd), *extra,
                      _bpd(r.even_bpd), _bpd(r.quadratic_bpd), _abbrev(r.schedule.timesteps))
    console.print(table)
    if result.truncate:
        console.print("start: the time the DP's schedule starts from (an auxiliary prior "
                      "below T); from T: the best schedule of the same K starting at T")


def _bpd(x: float | None) -> str:
    return "n/a" if x is None else fmt(x)


def _abbrev(tau: Any, n: int = SHOWN_TIMESTEPS) -> str:
    """'0, 3, 9, 20, 41, …, 870, 1000' for long schedules."""
    ts = [str(int(t)) for t in tau]
    if len(ts) > n:
        ts = ts[: n - 3] + ["…"] + ts[-3:]
    return ", ".join(ts)
