"""``ddpm-tools partition``: stage boundaries by optimal-denoiser timestep clustering."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, SeedOpt, console, fmt, print_json, rich_progress
from ddpm_tools.stages.clustering import (
    DEFAULT_ALPHA,
    DEFAULT_ETA,
    DEFAULT_GRID,
    DEFAULT_MAX_REFERENCE,
    DEFAULT_SAMPLES,
    ClusterResult,
)
from ddpm_tools.stages.run import partition_data

DATA_HELP = ("Training data: digits, 8gaussians, checkerboard, moons, swissroll, pinwheel, "
             "2spirals, npz:PATH or folder:PATH (its train split is used).")


@app.command("partition")
def partition_cmd(
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    stages: Annotated[int, typer.Option(help="Number of stages K (members of a set).")] = 3,
    T: Annotated[int, typer.Option("--T", help="Diffusion steps.")] = 1000,
    schedule: Annotated[str, typer.Option(help="Noise schedule: linear or cosine.")
                        ] = "linear",
    samples: Annotated[int, typer.Option(help="(x_0, noise) draws averaged in the "
                                              "similarity.")] = DEFAULT_SAMPLES,
    eta: Annotated[float, typer.Option(help="Two denoiser outputs agree on a coordinate when "
                                            "they differ by at most eta (output units: data "
                                            "units for x0, images in [-1, 1]).")
                   ] = DEFAULT_ETA,
    alpha: Annotated[float | None, typer.Option(
        help=f"Similarity threshold of --method threshold, in (0, 1] (default "
             f"{DEFAULT_ALPHA}).")] = None,
    method: Annotated[str, typer.Option(
        help="dp: exact segmentation of the time grid maximising within-stage similarity "
             "(any K); threshold: the rule of Zhang et al. 2024, eqs. (6)-(7) (K = 2 or 3)."
    )] = "dp",
    objective: Annotated[str, typer.Option(
        help="Objective of --method dp: ratio (sum of stage size x mean similarity, kernel "
             "k-means) or mean (sum of mean similarities; favours one-point stages).")
    ] = "ratio",
    target: Annotated[str, typer.Option(
        help="Denoiser output compared: x0 (the posterior mean of x_0 given x_t) or eps "
             "(the paper's eq. (4)).")
    ] = "x0",
    grid: Annotated[int, typer.Option(help="Times compared, evenly spaced from 1 to T; "
                                           "boundaries fall between them.")] = DEFAULT_GRID,
    max_reference: Annotated[int, typer.Option(
        help="Training examples the optimal denoiser sums over (a random subset above "
             "this).")] = DEFAULT_MAX_REFERENCE,
    plot: Annotated[Path | None, typer.Option(
        help="Draw the similarity matrix with the boundaries (.png, .pdf or .svg; needs the "
             "plot extra).")] = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Cut [1, T] into stages where the optimal denoiser's task changes (timestep
    clustering of Zhang et al. 2024): print each stage's t-range and draw the similarity
    matrix. The ranges are what `train --partition cluster` uses."""
    with rich_progress(enabled=not json_out) as progress:
        res = partition_data(data, stages, T=T, schedule=schedule, samples=samples, eta=eta,
                             alpha=alpha, method=method, objective=objective, target=target,
                             grid=grid, max_reference=max_reference, plot=plot, seed=seed,
                             progress=progress)
    if json_out:
        print_json({"data": data, "schedule": schedule, **res.to_json(),
                    "plot": None if plot is None else str(plot)})
        return
    _print(res, data)
    if plot is not None:
        console.print(f"wrote plot {plot}")


def _print(res: ClusterResult, data: str) -> None:
    st = res.settings
    table = Table(title=f"{data}: [1, {res.T}] in {len(res.ranges)} stages ({st.method}, "
                        f"target {st.target}, eta {st.eta:g}, {res.grid.size} grid times)")
    for col in ("stage", "t-range", "size", "grid times", "mean similarity"):
        table.add_column(col, justify="right")
    bounds = [*res.starts, res.grid.size]
    for k, (lo, hi) in enumerate(res.ranges):
        table.add_row(str(k), f"{lo}..{hi}", str(hi - lo + 1),
                      str(bounds[k + 1] - bounds[k]), fmt(res.stage_similarity[k], 3))
    console.print(table)
    console.print(f"objective ({st.objective}) = {fmt(res.objective)}; similarity = "
                  f"fraction of coordinates within eta, averaged over {st.samples} draws and "
                  f"{st.n_reference} reference examples")
