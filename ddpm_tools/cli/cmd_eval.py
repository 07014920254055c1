"""``ddpm-tools eval-bpd`` and ``ddpm-tools sample``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import (
    VARIANCE_HELP,
    DeviceOpt,
    JsonOpt,
    console,
    fmt,
    fmt_se,
    print_json,
    rich_progress,
)
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.device import resolve_device
from ddpm_tools.likelihood.elbo import ScheduleEval, eval_likelihood
from ddpm_tools.likelihood.ode import ODESettings
from ddpm_tools.sampling.sample_file import SampleRun, draw_samples
from ddpm_tools.schedules.spec import (
    SPEC_HELP,
    CostSource,
    fit_variance,
    pick_variance,
    resolve_schedule,
)
from ddpm_tools.sets import load_set

TableSamplesOpt = Annotated[int, typer.Option(
    "--table-samples", min=2, help="Examples of the train-split cost table behind dp:K.")]
CostsOpt = Annotated[Path | None, typer.Option(
    "--costs", help="Use this train-split cost table for dp:K instead of the set's cached one "
                    "(checked: same T, same set).")]


@app.command("eval-bpd")
def eval_bpd_cmd(
    set_dir: Annotated[Path, typer.Option("--set", help="Checkpoint set folder.")],
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
    variance: Annotated[str | None, typer.Option(
        help=VARIANCE_HELP + " Default: the schedule file's, else trained.")] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Bits/dim (negative ELBO) of schedules on held-out data, with standard errors.

    Several --schedule options are scored on the same examples and noise; `vs first`
    is the paired difference to the first schedule, with its own standard error.
    A schedule may start below T where the set has an auxiliary prior (train-prior).
    --method ode adds the probability-flow ODE bits/dim (Song et al. 2021; discrete data
    uniformly dequantized) on the same examples.
    """
    cset = load_set(set_dir)
    dev = str(resolve_device(device))
    split_data = load_data(data, split, seed=seed)
    source = CostSource(data, CostSettings(samples=table_samples, seed=seed), dev, costs,
                        pick_variance(variance, schedule or []))
    with rich_progress(enabled=not json_out) as progress:
        scheds = [resolve_schedule(s, set_dir, cset.T, source, progress)
                  for s in schedule or []]
        res = eval_likelihood(cset, split_data, scheds, method=method, samples=samples,
                              seed=seed, batch_size=batch_size, device=dev,
                              ode=ODESettings(steps=ode_steps, probes=probes,
                                              batch_size=batch_size), progress=progress,
                              variance=fit_variance(set_dir, source, progress))
    results = res.elbo
    if json_out:
        elbo = [{**_eval_json(r), "variance": res.variance} for r in results]
        print_json(elbo if res.ode is None else {"elbo": elbo, "ode": asdict(res.ode)})
        return
    _print_evals(results, f"bits/dim on {data} ({split} split, n = {results[0].n}, "
                          f"{res.variance} variance); ± is one standard error")
    if res.clipped:
        console.print(f"{res.variance} variance: the statistic was clipped at "
                      f"{len(res.clipped)} times t (first t = {res.clipped[0]}); the network "
                      "is badly fitted there")
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
    set_dir: Annotated[Path, typer.Option("--set", help="Checkpoint set folder.")],
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
    variance: Annotated[str | None, typer.Option(
        help=VARIANCE_HELP + " Default: the schedule file's, else trained.")] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Draw samples along a schedule (K network calls each); images in the data's levels."""
    cset = load_set(set_dir)
    dev = str(resolve_device(device))
    source = CostSource(data or cset.manifest.data.name,
                        CostSettings(samples=table_samples, seed=seed), dev, costs,
                        pick_variance(variance, [schedule]))
    with rich_progress(enabled=not json_out) as progress:
        label, tau = resolve_schedule(schedule, set_dir, cset.T, source, progress)
        run = draw_samples(cset, label, tau, n, out, grid=grid, eta=eta, seed=seed,
                           device=dev, progress=progress,
                           variance=fit_variance(set_dir, source, progress))
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
