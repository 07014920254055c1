"""``sample`` as one call: load a set once, resolve the named schedule on it and draw
samples along it into a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sampling.sample_file import SampleRun, draw_samples
from ddpm_tools.schedules.spec import CostSource, resolve_schedule
from ddpm_tools.sets.load import load_set


def sample_schedule(
    set_dir: str | os.PathLike[str], schedule: str, n: int, out: str | os.PathLike[str], *,
    grid: str | os.PathLike[str] | None = None, eta: float = 1.0, data: str | None = None,
    table_samples: int = 512, costs: Path | None = None, seed: int = 0, device: str = "cpu",
    progress: ProgressFn | None = None,
) -> SampleRun:
    """Draw ``n`` samples of the set at ``set_dir`` along the schedule spec ``schedule``
    (``FILE``, ``dp:K``, ``even:K``, ... see :mod:`ddpm_tools.schedules.spec`) into
    ``out`` (.npz), and a picture into ``grid`` when given.

    ``dp:K`` is solved on the set's train-split table of ``data`` (default: the data the
    set was trained on) with ``table_samples`` examples, or on ``costs``.
    """
    cset = load_set(set_dir)
    source = CostSource(data or cset.manifest.data.name,
                        CostSettings(samples=table_samples, seed=seed), device, costs)
    label, tau = resolve_schedule(schedule, cset, source, progress)
    return draw_samples(cset, label, tau, n, out, grid=grid, eta=eta, seed=seed,
                        device=device, progress=progress)
