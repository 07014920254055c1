"""``ddpm-tools cost-table`` (build, resume, shard) and ``cost-table merge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import (
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    console,
    fmt,
    print_json,
    rank_progress,
)
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.run import CostTableReport, merge_shards, run_cost_table
from ddpm_tools.costs.summary import TableSummary
from ddpm_tools.device import is_main_process

cost_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(cost_app, name="cost-table",
              help="The KL cost table of a set: the cost of every step t -> s (nats per "
                   "example) and the prior; `cost-table merge` joins shards.")


def _summary(s: TableSummary) -> dict[str, object]:
    """Headline numbers of a table for --json."""
    return {"T": s.T, "dims": s.dims, "n_samples": s.n_samples, "split": s.split,
            "full_chain_bpd": s.full_chain_bpd, "prior_bpd": s.prior_bpd}


def _print(report: CostTableReport, json_out: bool) -> None:
    run, summary = report.run, report.summary
    info: dict[str, object] = {"out": str(run.path), "columns_done": run.columns_done,
                               "columns_total": run.columns_total, "seconds": run.seconds}
    if summary is not None:
        info.update(_summary(summary))
    if json_out:
        print_json(info)
        return
    if summary is None:
        console.print(f"shard written to {run.path}: {run.columns_done} of its "
                      f"{run.columns_total} columns t in {run.seconds:.1f} s; join the shards "
                      "with `ddpm-tools cost-table merge`")
        return
    t = summary
    console.print(f"cost table written to {run.path} ({run.seconds:.1f} s): T = {t.T}, "
                  f"{t.n_samples} examples of the {t.split} split")
    console.print(f"  full chain (all T steps): {fmt(t.full_chain_bpd)} bits/dim predicted, "
                  f"of which prior {fmt(t.prior_bpd)}")
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
    shard: Annotated[str | None, typer.Option(
        help="Compute shard i/n of the columns t (t = i+1, i+1+n, ...; merge later), or "
             "auto: under torchrun every rank its share and rank 0 writes OUT, in a Slurm "
             "job array the task's shard.")] = None,
    precision: PrecisionOpt = "fp32",
    json_out: JsonOpt = False,
) -> None:
    """Build the KL cost table of a set: exactly T network calls per example.

    L[s, t] is the expected cost in nats per example of the step t -> s (row 0: the
    decoder); `prior` the cost of starting at T. Standard errors go to `L_se`.
    """
    if ctx.invoked_subcommand is not None:
        return
    with rank_progress(json_out) as progress:
        run = run_cost_table(set_dir, data, out, split=split, device=device, resume=resume,
                             settings=CostSettings(samples=samples, batch_size=batch_size,
                                                   seed=seed, precision=precision),
                             shard=shard, progress=progress)
    if is_main_process():  # under torchrun only rank 0 prints
        _print(run, json_out)


@cost_app.command("merge")
def merge_cmd(
    shards: Annotated[list[Path], typer.Argument(help="Shard files written by --shard i/n.")],
    out: Annotated[Path, typer.Option(help="The merged cost table (.safetensors).")],
    json_out: JsonOpt = False,
) -> None:
    """Join the shards of one cost-table run into the complete table."""
    summary = merge_shards(list(shards), out)
    if json_out:
        print_json({"out": str(out), **_summary(summary)})
    else:
        console.print(f"merged {len(shards)} shards into {out}: T = {summary.T}, full chain "
                      f"{fmt(summary.full_chain_bpd)} bits/dim predicted")
