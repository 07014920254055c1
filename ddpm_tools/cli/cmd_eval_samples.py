"""``ddpm-tools eval-samples``: score a samples file against held-out data."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ddpm_tools.cli.app import app
from ddpm_tools.cli.common import JsonOpt, SeedOpt, console, fmt, fmt_se, print_json, rich_progress
from ddpm_tools.metrics.evaluate_samples import SampleReport, evaluate_samples


class Features(str, Enum):
    """Feature network for image samples."""

    digits = "digits"
    inception = "inception"


@app.command("eval-samples")
def eval_samples_cmd(
    samples: Annotated[Path, typer.Option(
        "--samples", help="Samples .npz from `ddpm-tools sample` (key 'samples': uint8 level "
                          "indices [N, C, H, W] for images, float [N, D] for 2-D data).")],
    data: Annotated[str | None, typer.Option(
        "--data", help="Data set to compare with (default: the one named in the file).")] = None,
    split: Annotated[str, typer.Option(help="Reference split (held out: test).")] = "test",
    features: Annotated[Features, typer.Option(
        help="Image feature space: the built-in digits classifier, or the FID Inception-v3 "
             "(needs --weights and torch-fidelity or pytorch-fid).")] = Features.digits,
    weights: Annotated[Path | None, typer.Option(
        help="Local FID Inception weights (.safetensors or weights-only .pth) for "
             "--features inception; nothing is downloaded.")] = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Sample quality against held-out data: Frechet distance, KID ± SE, precision and
    recall in a classifier's feature space for images; MMD, sliced W1, energy distance and
    the true log-density for 2-D data. Reference statistics are cached per split."""
    with rich_progress(enabled=not json_out) as progress:
        report = evaluate_samples(samples, data, split, seed, features=features.value,
                                  weights=weights, progress=progress)
    if json_out:
        print_json(dataclasses.asdict(report))
    else:
        _print_report(report)


def _value(value: float, se: float | None) -> str:
    digits = 4 if abs(value) >= 1e-3 or value == 0 else 6
    return fmt(value, digits) if se is None else fmt_se(value, se, digits)


def _print_report(r: SampleReport) -> None:
    title = escape(f"{r.n_samples} samples from {r.samples_path} vs {r.data} ({r.split} "
                   f"split, n = {r.n_reference})")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("what it means")
    for m in r.metrics:
        table.add_row(escape(m.name), _value(m.value, m.se), escape(m.meaning))
    console.print(table)
    if r.kind == "images":
        if r.classifier_accuracy is not None:
            net = f"built-in digits classifier (test accuracy {100 * r.classifier_accuracy:.2f}%)"
        else:
            net = f"FID Inception-v3 ({r.features})"
        console.print(f"features: {net}", highlight=False)
        console.print(f"weights sha256: {r.classifier_sha256}", highlight=False)
    console.print(f"reference statistics: {r.reference_cache or 'not cached'}; seed {r.seed} "
                  f"({'KID subsets' if r.kind == 'images' else 'sliced-W1 directions'})",
                  highlight=False)
