"""``ddpm-tools export-schedule``: a schedule file in the form another library takes."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, print_json
from ddpm_tools.schedules.export import ScheduleExport, export_schedule


class Target(str, Enum):
    """The library a schedule is exported to."""

    diffusers = "diffusers"
    improved_diffusion = "improved-diffusion"


USAGE = {
    Target.diffusers: "descending, for diffusers' scheduler.set_timesteps(timesteps=timesteps)",
    Target.improved_diffusion: "sorted, for improved-diffusion's "
                               "SpacedDiffusion(use_timesteps=use_timesteps, ...)",
}


@app.command("export-schedule")
def export_schedule_cmd(
    schedule: Annotated[Path, typer.Argument(
        help="Schedule JSON written by optimize-schedule (ddpm-tools times 0 < ... <= T).")],
    to: Annotated[Target, typer.Option(
        "--to", help="diffusers: the descending list for DDPMScheduler.set_timesteps("
                     "timesteps=...); improved-diffusion: the use_timesteps set of "
                     "SpacedDiffusion. Both count from 0 (index t - 1).")],
    json_out: JsonOpt = False,
) -> None:
    """Print a schedule as the 0-based timesteps another library takes, ready to paste.

    ddpm-tools calls the network at tau_1..tau_K (t in [1, T]); diffusers and
    improved-diffusion count from 0, so each time t becomes index t - 1.
    """
    _print(export_schedule(schedule, to.value), schedule, to, json_out)


def _print(e: ScheduleExport, schedule: Path, to: Target, json_out: bool) -> None:
    s = e.schedule
    if json_out:
        print_json({"schedule": str(schedule), "to": e.to, "T": s.T, "budget": s.budget,
                    "timesteps": e.timesteps, "code": e.code, "note": e.note})
        return
    typer.echo(f"# {schedule.name}: K = {s.budget} steps of T = {s.T}, 0-based (index t - 1), "
               f"{USAGE[to]}")
    if e.note:
        typer.echo(f"# note: {e.note}")
    typer.echo(e.code)  # plain echo: a long list stays on one line, ready to paste
