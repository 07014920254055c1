"""``ddpm-tools cost-table`` (build, resume, shard) and ``cost-table merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import (
    DeviceOpt,
    JsonOpt,
    VarianceOpt,
    console,
    fmt,
    print_json,
    rich_progress,
)
from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.costs.build import CostTableRun, Shard, build_cost_table, merge_cost_tables
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import CostTable, predicted_bpd
from ddpm_tools.data import load_data
from ddpm_tools.device import resolve_device
from ddpm_tools.errors import BadInputError
from ddpm_tools.sets import load_set

cost_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(cost_app, name="cost-table",
              help="The KL cost table of a set: the cost of every step t -> s (nats per "
                   "example) and the prior; `cost-table merge` joins shards.")


def _full_chain_bpd(table: CostTable) -> tuple[float, float]:
    """(full-chain bits/dim, prior bits/dim) predicted by a table."""
    full = predicted_bpd(table, np.arange(table.T + 1))
    return full, float(nats_to_bpd(float(table.prior[table.T]), table.dims))


def _summary(table: CostTable) -> dict[str, object]:
    """Headline numbers of a table for --json."""
    full_bpd, prior_bpd = _full_chain_bpd(table)
    return {"T": table.T, "dims": table.dims, "n_samples": table.n_samples,
            "split": table.split, "full_chain_bpd": full_bpd, "prior_bpd": prior_bpd}


def _print(run: CostTableRun, json_out: bool) -> None:
    info: dict[str, object] = {"out": str(run.path), "columns_done": run.columns_done,
                               "columns_total": run.columns_total, "seconds": run.seconds,
                               "clipped": list(run.clipped)}
    if run.table is not None:
        info.update(_summary(run.table))
    if json_out:
        print_json(info)
        return
    if run.table is None:
        console.print(f"shard written to {run.path}: {run.columns_done} of its "
                      f"{run.columns_total} columns t in {run.seconds:.1f} s; join the shards "
                      "with `ddpm-tools cost-table merge`")
        return
    t = run.table
    full_bpd, prior_bpd = _full_chain_bpd(t)
    console.print(f"cost table written to {run.path} ({run.seconds:.1f} s): T = {t.T}, "
                  f"{t.n_samples} examples of the {t.split} split, {t.variance} variance")
    if run.clipped:
        console.print(f"  {t.variance} variance: the statistic was clipped at "
                      f"{len(run.clipped)} times t (first t = {run.clipped[0]}); the network "
                      "is badly fitted there")
    console.print(f"  full chain (all T steps): {fmt(full_bpd)} bits/dim predicted, of which "
                  f"prior {fmt(prior_bpd)}")
    console.print("  next: ddpm-tools optimize-schedule --costs "
                  f"{run.path} --budget 32")


@cost_app.callback()
def cost_table_cmd(
    ctx: typer.Context,
    set_dir: Annotated[Path | None, typer.Option("--set", help="Checkpoint set folder.")] = None,
    data: Annotated[str | None, typer.Option(help="Data the set was trained on (digits, "
                                                  "8gaussians, npz:PATH, ...).")] = None,
    split: Annotated[str, typer.Option(help="Split measured: train (to choose schedules) or "
                                            "test.")] = "train",
    samples: Annotated[int, typer.Option(min=2, help="Examples averaged per entry.")] = 512,
    out: Annotated[Path | None, typer.Option(help="Output .safetensors file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per network call.")] = 256,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option(help="Picks the examples and the noise.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from OUT.partial."
                                         )] = False,
    shard: Annotated[str | None, typer.Option(help="Compute shard i/n of the columns t "
                                                   "(t = i+1, i+1+n, ...); merge later.")
                     ] = None,
    variance: VarianceOpt = "trained",
    json_out: JsonOpt = False,
) -> None:
    """Build the KL cost table of a set: exactly T network calls per example.

    L[s, t] is the expected cost in nats per example of the step t -> s (row 0: the
    decoder); `prior` the cost of starting at T. Standard errors go to `L_se`.
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--set", set_dir), ("--data", data), ("--out", out)) if v is None]
    if missing:
        raise BadInputError(f"cost-table needs {', '.join(missing)}; see ddpm-tools cost-table "
                            "--help")
    assert set_dir is not None and data is not None and out is not None
    cset = load_set(set_dir)
    split_data = load_data(data, split, seed=seed)
    settings = CostSettings(samples=samples, batch_size=batch_size, seed=seed)
    dev = str(resolve_device(device))
    with rich_progress(enabled=not json_out) as progress:
        run = build_cost_table(cset, split_data, out, settings, device=dev, resume=resume,
                               shard=Shard.parse(shard) if shard else None, progress=progress,
                               variance=variance)
    _print(run, json_out)


@cost_app.command("merge")
def merge_cmd(
    shards: Annotated[list[Path], typer.Argument(help="Shard files written by --shard i/n.")],
    out: Annotated[Path, typer.Option(help="The merged cost table (.safetensors).")],
    json_out: JsonOpt = False,
) -> None:
    """Join the shards of one cost-table run into the complete table."""
    table = merge_cost_tables(list(shards), out)
    info = {"out": str(out), **_summary(table)}
    if json_out:
        print_json(info)
    else:
        console.print(f"merged {len(shards)} shards into {out}: T = {table.T}, full chain "
                      f"{fmt(_full_chain_bpd(table)[0])} bits/dim predicted")
