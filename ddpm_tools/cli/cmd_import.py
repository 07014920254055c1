"""``ddpm-tools import-checkpoint``: a checkpoint set from an improved-diffusion or
guided-diffusion checkpoint (weights_only load, strict keys, safetensors out)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, console, print_json
from ddpm_tools.sets.openai_import import import_checkpoint


class Project(str, Enum):
    """The project whose checkpoint is imported."""

    improved_diffusion = "improved-diffusion"
    guided_diffusion = "guided-diffusion"


@app.command("import-checkpoint")
def import_checkpoint_cmd(
    project: Annotated[Project, typer.Argument(
        help="improved-diffusion or guided-diffusion: whose flags and network the file has.")],
    model: Annotated[Path, typer.Argument(
        help="The checkpoint (.pt, a state dict saved with torch.save; model*.pt or "
             "ema_*.pt). Read with torch.load(weights_only=True): nothing is unpickled.")],
    flags: Annotated[str, typer.Option(
        "--flags", help='The MODEL_FLAGS and DIFFUSION_FLAGS the model was trained with, in '
                        'one string, e.g. "--image_size 32 --num_channels 128 '
                        '--num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 '
                        '--noise_schedule cosine". Unset flags take the project\'s defaults.')],
    out: Annotated[Path, typer.Option(
        "--out", help="New (or empty) folder for the checkpoint set.")],
    json_out: JsonOpt = False,
) -> None:
    """Import an improved-diffusion / guided-diffusion checkpoint as a one-member set.

    The set works with every command (cost-table, optimize-schedule, eval-bpd, sample,
    export-schedule). Only unconditional models are supported.
    """
    r = import_checkpoint(project.value, model, flags, out)
    if json_out:
        print_json({"out": str(r.out), "project": r.project, "T": r.T, "schedule": r.schedule,
                    "variance": r.variance, "prediction": r.prediction,
                    "image_shape": list(r.image_shape), "parameters": r.parameters,
                    "dtypes": list(r.dtypes), "source_sha256": r.source_sha256})
        return
    console.print(f"imported {r.project} checkpoint -> {r.out}: {r.parameters:,} parameters "
                  f"({', '.join(r.dtypes)}), image {'x'.join(map(str, r.image_shape))}, "
                  f"T = {r.T} ({r.schedule}), {r.prediction} prediction, {r.variance} variance")
