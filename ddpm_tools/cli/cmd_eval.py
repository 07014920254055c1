"""``ddpm-tools eval-bpd`` and ``ddpm-tools sample``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import (
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    SetOpt,
    console,
    fmt,
    fmt_se,
    print_json,
    rank_progress,
    rich_progress,
)
from ddpm_tools.likelihood.elbo import LikelihoodEval, ScheduleEval
from ddpm_tools.likelihood.ode import ODESettings
from ddpm_tools.likelihood.run import eval_schedules
from ddpm_tools.sampling.run import sample_schedule
from ddpm_tools.sampling.sample_file import SampleRun
from ddpm_tools.schedules.spec import SPEC_HELP

TableSamplesOpt = Annotated[int, typer.Option(
    "--table-samples", min=2, help="Examples of the train-split cost table behind dp:K.")]
CostsOpt = Annotated[Path | None, typer.Option(
    "--costs", help="Use this train-split cost table for dp:K instead of the set's cached one "
                    "(checked: same T, same set).")]


@app.command("eval-bpd")
def eval_bpd_cmd(
    set_dir: SetOpt,
    data: Annotated[str, typer.Option(help="Data the set was trained on.")],
    schedule: Annotated[list[str] | None, typer.Option(
        "--schedule", help=SPEC_HELP + " Repeatable; with --method ode it defaults to full."
    )] = None,
    split: Annotated[str, typer.Option(help="Split scored (held out: test).")] = "test",
    samples: Annotated[int | None, typer.Option(min=2, help="Examples (default: the whole "
                                                            "split).")] = None,
    table_samples: TableSamplesOpt = 512,
    costs: CostsOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per network call.")] = 256,
    seed: Annotated[int, typer.Option(help="Picks the examples and the noise.")] = 0,
    method: Annotated[str, typer.Option(
        help="elbo: negative ELBO of each schedule; ode: also the probability-flow ODE "
             "likelihood next to the ELBO (exact up to solver error; for discrete data a "
             "dequantized bound).")] = "elbo",
    ode_steps: Annotated[int, typer.Option(
        min=1, help="--method ode: fixed RK4 steps over t in [1, T].")] = 100,
    probes: Annotated[int, typer.Option(
        min=1, help="--method ode: Hutchinson probes per example when D > 16 (exact "
                    "divergence otherwise).")] = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    json_out: JsonOpt = False,
) -> None:
    """Bits/dim (negative ELBO) of schedules on held-out data, with standard errors.

    Several --schedule options are scored on the same examples and noise; `vs first`
    is the paired difference to the first schedule, with its own standard error.
    A schedule may start below T where the set has an auxiliary prior (train-prior).
    --method ode adds the probability-flow ODE bits/dim (Song et al. 2021; discrete data
    uniformly dequantized) on the same examples. Under torchrun the ranks split the
    examples and rank 0 prints the numbers of one process.
    """
    with rank_progress(json_out) as progress:
        res = eval_schedules(set_dir, data, schedule or [], split=split, samples=samples,
                             table_samples=table_samples, costs=costs, batch_size=batch_size,
                             seed=seed, method=method, device=device, progress=progress,
                             ode=ODESettings(steps=ode_steps, probes=probes,
                                             batch_size=batch_size), precision=precision)
    if res.elbo:  # empty on the torchrun ranks other than 0: rank 0 prints
        _print_likelihood(res, f"{data} ({split} split", json_out)


def _print_likelihood(res: LikelihoodEval, where: str, json_out: bool) -> None:
    results = res.elbo
    if json_out:
        elbo = [_eval_json(r) for r in results]
        print_json(elbo if res.ode is None else {"elbo": elbo, "ode": asdict(res.ode)})
        return
    _print_evals(results, f"bits/dim on {where}, n = {results[0].n}); "
                          "± is one standard error")
    if res.ode is not None:
        o = res.ode
        console.print(f"probability-flow ODE: {fmt_se(o.bpd, o.bpd_se)} bits/dim (RK4, "
                      f"{o.steps} steps, divergence: {o.divergence}"
                      + (", uniform dequantization: an upper bound" if o.dequantized else "")
                      + f"; {o.seconds:.1f} s), on the same {o.n} examples")


def _eval_json(r: ScheduleEval) -> dict[str, object]:
    return {"schedule": r.label, "budget": r.budget, "bpd": r.bpd, "bpd_se": r.bpd_se,
            "prior_bpd": r.prior_bpd, "steps_bpd": r.steps_bpd, "decoder_bpd": r.decoder_bpd,
            "n": r.n, "diff_bpd": r.diff_bpd, "diff_se": r.diff_se, "timesteps": r.timesteps}


def _print_evals(results: list[ScheduleEval], title: str) -> None:
    table = Table(title=title)
    for col in ("schedule", "K", "bits/dim", "prior", "steps", "decoder", "vs first"):
        table.add_column(col, justify="right")
    for r in results:
        diff = "" if r.diff_bpd is None or r.diff_se is None else fmt_se(r.diff_bpd, r.diff_se)
        table.add_row(r.label, str(r.budget), fmt_se(r.bpd, r.bpd_se), fmt(r.prior_bpd),
                      fmt(r.steps_bpd), fmt(r.decoder_bpd), diff)
    console.print(table)


@app.command("sample")
def sample_cmd(
    set_dir: SetOpt,
    schedule: Annotated[str, typer.Option(help=SPEC_HELP)],
    out: Annotated[Path, typer.Option(help="Output .npz (key 'samples').")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples.")] = 64,
    grid: Annotated[Path | None, typer.Option(help="Also write a PNG: an image grid, or a "
                                                   "scatter plot for 2-D data.")] = None,
    eta: Annotated[float, typer.Option(min=0.0, max=1.0, help="1 = ancestral (the model the "
                                                              "DP scores), 0 = DDIM.")] = 1.0,
    data: Annotated[str | None, typer.Option(
        help="Data behind dp:K's train-split table (default: the data the set was trained "
             "on; needed for diffusers folders).")] = None,
    table_samples: TableSamplesOpt = 512,
    costs: CostsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise; same seed, same samples.")] = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Draw samples along a schedule (K network calls each); images in the data's levels."""
    with rich_progress(enabled=not json_out) as progress:
        run = sample_schedule(set_dir, schedule, n, out, grid=grid, eta=eta, data=data,
                              table_samples=table_samples, costs=costs, seed=seed,
                              device=device, progress=progress)
    _print_sample(run, json_out)


def _print_sample(run: SampleRun, json_out: bool) -> None:
    info = {"out": str(run.path), "grid": str(run.grid) if run.grid else None, "n": run.n,
            "schedule": run.label, "budget": run.budget, "eta": run.eta,
            "seconds": run.seconds}
    if json_out:
        print_json(info)
    else:
        console.print(f"{run.n} samples ({run.label}, K = {run.budget}, eta = {run.eta}) "
                      f"written to {run.path}" + (f"; picture: {run.grid}" if run.grid else ""))
