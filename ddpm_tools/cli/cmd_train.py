"""``ddpm-tools train``, ``train-interval`` and ``inspect``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import (
    DeviceOpt,
    JsonOpt,
    SetOpt,
    console,
    fmt,
    print_json,
    rich_progress,
)
from ddpm_tools.errors import BadInputError
from ddpm_tools.training.api import TrainReport, train, train_interval
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec
from ddpm_tools.training.trainer import MemberResult

DATA_HELP = ("Data: digits, 8gaussians, checkerboard, moons, swissroll, pinwheel, 2spirals, "
             "npz:PATH or folder:PATH.")
_DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 4))


def _print_results(results: list[MemberResult], title: str) -> None:
    table = Table(title=title)
    for col in ("member", "t-range", "steps", "final loss", "seconds", ""):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r.index), f"{r.t_lo}..{r.t_hi}", str(r.steps_done),
                      fmt(r.final_loss) if r.final_loss is not None else "-",
                      f"{r.seconds:.1f}", "already trained" if r.skipped else "")
    console.print(table)


def _results_json(results: list[MemberResult]) -> list[dict[str, object]]:
    return [{"member": r.index, "t_lo": r.t_lo, "t_hi": r.t_hi, "steps": r.steps_done,
             "final_loss": r.final_loss, "seconds": r.seconds, "skipped": r.skipped}
            for r in results]


@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Option(help=DATA_HELP)],
    out: Annotated[Path, typer.Option(help="Folder of the checkpoint set to create (or resume).")],
    intervals: Annotated[int, typer.Option(min=1, help="Members: 1 = single network, T = one "
                                                       "network per timestep (multidecoder: "
                                                       "stages).")] = 4,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps per member (multidecoder: "
                                                   "joint steps of the whole network).")
                     ] = 5000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes training members in "
                                                     "parallel.")] = _DEFAULT_WORKERS,
    partition: Annotated[str, typer.Option(help="How [1, T] is cut: uniform (equal steps), "
                                                "snr (equal log-SNR spans) or cluster "
                                                "(optimal-denoiser timestep clustering, see "
                                                "the partition command).")] = "uniform",
    arch: Annotated[str, typer.Option(help="mlp (vectors), unet (images), multidecoder (one "
                                           "shared encoder and a decoder per member, MLP "
                                           "layers, trained jointly in one process; Zhang et "
                                           "al. 2024), or auto.")] = "auto",
    stage_sampling: Annotated[str, typer.Option(help="multidecoder: each batch's stage drawn "
                                                     "uniformly or in proportion to its number "
                                                     "of timesteps (length).")] = "uniform",
    schedule: Annotated[str, typer.Option(help="Noise schedule: linear or cosine.")] = "linear",
    T: Annotated[int, typer.Option("--T", min=2, help="Diffusion steps.")] = 1000,
    prediction: Annotated[str, typer.Option(help="Network output: eps, x0 or v.")] = "eps",
    variance: Annotated[str, typer.Option(help="fixed_small, fixed_large or learned_range "
                                               "(hybrid loss).")] = "fixed_small",
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-4,
    ema: Annotated[float, typer.Option(help="EMA decay of saved weights (0 = raw weights).")
                   ] = 0.999,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between resumable "
                                                              "checkpoints.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same weights.")] = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Create a checkpoint set (partition [1, T] into members) and train every member."""
    spec = SetSpec(intervals=intervals, partition=partition, arch=arch, schedule=schedule, T=T,
                   prediction=prediction, variance=variance, stage_sampling=stage_sampling)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema=ema,
                      checkpoint_every=checkpoint_every, seed=seed)
    with rich_progress(enabled=not json_out) as progress:
        rep = train(out, data, spec, cfg, workers=workers, device=device, progress=progress)
    _report(rep, json_out)


def _report(rep: TrainReport, json_out: bool) -> None:
    if json_out:
        print_json({"set": str(rep.set_dir), "members": _results_json(rep.results),
                    "seconds": rep.seconds})
    else:
        _print_results(rep.results, f"{rep.set_dir}: {len(rep.results)} member(s) trained "
                                    f"in {rep.seconds:.1f} s")


@app.command("train-interval")
def train_interval_cmd(
    set_dir: SetOpt,
    member: Annotated[str, typer.Option(help="Member index, or 'auto' under torchrun (rank r "
                                             "takes members r, r+W, ...).")],
    steps: Annotated[int | None, typer.Option(min=1, help="Train up to this many steps "
                                                          "(default: the set's).")] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Train one member of a set (resumable: a rerun continues from its last checkpoint)."""
    with rich_progress(enabled=not json_out) as progress:
        rep = train_interval(set_dir, _member_index(member), steps=steps, device=device,
                             progress=progress)
    _report(rep, json_out)


def _member_index(member: str) -> int | None:
    """Parses --member: an integer index, or None for 'auto'."""
    if member == "auto":
        return None
    try:
        return int(member)
    except ValueError:
        raise BadInputError(f"--member must be an integer index or 'auto' (got "
                            f"{member!r})") from None
