"""``ddpm-tools optimize-schedule``: exact DP schedules from a cost table."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, console, fmt, print_json, rich_progress
from ddpm_tools.costs_io import OptimizeResult, optimize_table, read_cost_table
from ddpm_tools.errors import BadInputError, MissingExtraError
from ddpm_tools.fileio import atomic_write_bytes, ensure_writable_dir, sha256_file
from ddpm_tools.schedule_file import write_schedule

PLOT_HINT = "install the plot extra: pip install 'ddpm-tools[plot]'"
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
        "--set", help="Checkpoint set to build the table from instead of --costs (not yet "
                      "supported: run cost-table first).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Data to build the table on, with --set.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the ELBO-optimal K-step schedule exactly (dynamic program over the cost table)
    for each budget K, next to the even and quadratic strides. Units: bits/dim; the JSON
    also gives nats per example."""
    if set_dir is not None or data is not None:
        raise BadInputError(
            "optimize-schedule --set/--data is not yet supported; build a table with "
            "cost-table first and pass it as --costs"
        )
    if costs is None:
        raise BadInputError("no cost table given; pass --costs FILE (written by cost-table)")
    if all_budgets == bool(budget):
        raise BadInputError(
            "give either --budget K (repeatable) or --all-budgets, exactly one of the two"
        )
    if out is not None:
        ensure_writable_dir(out)
    if plot is not None:
        _check_plot_target(plot)
    table = read_cost_table(costs)
    source: dict[str, str | int | float] = {
        "costs": str(costs), "costs_sha256": sha256_file(costs)}
    with rich_progress(enabled=not json_out) as progress:
        budgets = None if all_budgets else list(dict.fromkeys(budget or []))  # unique, in order
        result = optimize_table(table, budgets, source=source, progress=progress)
    written = []
    if out is not None:
        for r in result.results:
            path = out / f"schedule_K{r.schedule.budget}.json"
            write_schedule(path, r.schedule)
            written.append(path)
    if plot is not None:
        _plot_frontier(plot, result)
    if json_out:
        print_json(_to_json(result))
        return
    _print_table(result, costs)
    if written:
        console.print(f"wrote {len(written)} schedule file(s) to {out}")
    if plot is not None:
        console.print(f"wrote plot {plot}")


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
             "quadratic_bpd": r.quadratic_bpd}
            for r in result.results
        ],
    }


def _print_table(result: OptimizeResult, costs: Path) -> None:
    table = Table(title=f"{costs}: T = {result.T}, D = {result.dims}; DP solved in "
                        f"{result.solve_seconds:.3f} s (predicted bits/dim, lower is better)")
    for col in ("K", "DP bits/dim", "even bits/dim", "quadratic bits/dim"):
        table.add_column(col, justify="right")
    table.add_column("timesteps (DP)")
    for r in result.results:
        table.add_row(str(r.schedule.budget), _bpd(r.schedule.predicted_bpd),
                      _bpd(r.even_bpd), _bpd(r.quadratic_bpd), _abbrev(r.schedule.timesteps))
    console.print(table)


def _bpd(x: float | None) -> str:
    return "n/a" if x is None else fmt(x)


def _abbrev(tau: Any, n: int = SHOWN_TIMESTEPS) -> str:
    """'0, 3, 9, 20, 41, …, 870, 1000' for long schedules."""
    ts = [str(int(t)) for t in tau]
    if len(ts) > n:
        ts = ts[: n - 3] + ["…"] + ts[-3:]
    return ", ".join(ts)


def _check_plot_target(path: Path) -> None:
    """Fail before the solve: matplotlib installed, format known, folder writable."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError(f"--plot needs matplotlib; {PLOT_HINT}") from None
    kinds = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        raise BadInputError(
            f"--plot {path}: cannot tell the image format from '{path.suffix}'; use a name "
            "ending in .png, .pdf or .svg"
        )
    ensure_writable_dir(path.parent)


def _plot_frontier(path: Path, result: OptimizeResult) -> None:
    """Predicted bits/dim against K for the DP and both strides, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, StrMethodFormatter

    ks = [r.schedule.budget for r in result.results]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, ys in (
        ("DP (optimal)", [r.schedule.predicted_bpd for r in result.results]),
        ("even stride", [r.even_bpd for r in result.results]),
        ("quadratic stride", [r.quadratic_bpd for r in result.results]),
    ):
        ax.plot(ks, [math.nan if y is None else y for y in ys], marker="o", markersize=3,
                label=label)
    if len(ks) > 1 and max(ks) / min(ks) >= 10:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("budget K (network calls per sample)")
    ax.set_ylabel("predicted bits/dim (cost table)")
    ax.set_title(f"T = {result.T}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower())
    atomic_write_bytes(path, buf.getvalue())
