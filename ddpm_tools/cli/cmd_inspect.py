"""``ddpm-tools inspect``: what a checkpoint set, cost table or schedule file holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, console, fmt, print_json
from ddpm_tools.costs.summary import TableSummary, inspect_table
from ddpm_tools.errors import BadInputError
from ddpm_tools.schedules.schedule_file import read_schedule, schedule_to_dict
from ddpm_tools.sets.inspect import SetReport, inspect_set


@app.command("inspect")
def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A checkpoint set folder, a cost table "
                                              "(.safetensors) or a schedule (.json).")],
    json_out: JsonOpt = False,
) -> None:
    """Show what a set, cost table or schedule holds; validate every member of a set."""
    if path.is_dir():
        rep = inspect_set(path)
        print_json(rep.to_json()) if json_out else _print_set(rep)
    elif path.suffix == ".safetensors":
        info = _table_info(inspect_table(path))
        print_json(info) if json_out else _print_kv(f"cost table {path}", info)
    elif path.suffix == ".json":
        d = schedule_to_dict(read_schedule(path))
        print_json(d) if json_out else _print_kv(f"schedule {path}", d)
    elif not path.exists():
        raise BadInputError(f"{path} does not exist; pass a set folder, a cost table or a "
                            "schedule file")
    else:
        raise BadInputError(f"{path} is neither a folder, a .safetensors cost table nor a "
                            ".json schedule; inspect reads those three")


def _table_info(s: TableSummary) -> dict[str, Any]:
    info = dataclasses.asdict(s)
    del info["prior_bpd"]  # inspect shows the full chain; cost-table adds the prior term
    return info


def _print_kv(title: str, info: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in info.items():
        text = fmt(v) if isinstance(v, float) else str(v)
        if isinstance(v, list) and len(v) > 16:
            text = f"{v[:8]} … {v[-4:]} ({len(v)} values)"
        table.add_row(k, text)
    console.print(table)


def _print_set(rep: SetReport) -> None:
    console.print(f"[bold]{rep.path}[/]  T={rep.T} schedule={rep.schedule} "
                  f"prediction={rep.prediction} variance={rep.variance} data={rep.data} "
                  f"shape={rep.shape} levels={rep.levels}", highlight=False)
    table = Table()
    for col in ("member", "t-range", "architecture", "parameters", "steps trained",
                "final loss", "status"):
        table.add_column(col, justify="right")
    for m in rep.members:
        table.add_row(str(m.index), f"{m.t_lo}..{m.t_hi}", m.arch, f"{m.parameters:,}",
                      f"{m.steps_done}/{m.steps_target}",
                      fmt(m.final_loss) if m.final_loss is not None else "-", m.status)
    console.print(table)
