"""``ddpm-tools sample``: draw samples, store them as .npz, draw a picture.

File format (read back by ``eval-samples``): an .npz with ``samples`` (images: uint8
level indices k in 0..levels-1, ``[N, C, H, W]``; 2-D data: float32 ``[N, D]``),
``levels`` (int; 0 for continuous data) and ``data`` (the set's data spec).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_tools.core.variances import StepVariance
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import atomic_write_bytes, ensure_writable_dir
from ddpm_tools.io.png import image_grid, write_png
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sampling.ancestral import sample, to_levels
from ddpm_tools.sets.checkpoint_set import CheckpointSet


@dataclass(frozen=True)
class SampleRun:
    """What ``sample`` wrote."""

    path: Path  # the .npz
    grid: Path | None  # the PNG, if asked for
    label: str  # schedule as given
    budget: int  # K
    n: int  # samples
    eta: float  # 1 ancestral, 0 DDIM
    seconds: float  # wall-clock time


def write_samples_npz(path: str | os.PathLike[str], samples: np.ndarray, levels: int | None,
                      data: str) -> None:
    """The samples file format of this module's docstring, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, samples=samples, levels=np.int64(levels or 0), data=np.array(data))
    atomic_write_bytes(path, buf.getvalue())


def write_picture(path: str | os.PathLike[str], samples: np.ndarray, levels: int | None,
                  title: str = "") -> None:
    """A PNG grid of level-index images ``[N, C, H, W]``, or a scatter of 2-D points."""
    if levels is None:
        if samples.ndim != 2 or samples.shape[1] != 2:
            raise BadInputError("a picture of continuous data needs 2-D points")
        from ddpm_tools.io.plots import scatter_png

        scatter_png(samples, path, title=title)
        return
    pixels = (samples.astype(np.float64) * 255.0 / (levels - 1)).round().astype(np.uint8)
    grid = image_grid(pixels, ncol=int(np.ceil(np.sqrt(len(pixels)))))
    scale = max(1, 256 // max(grid.shape[:2]))  # small images (8x8 digits) are enlarged
    write_png(path, np.kron(grid, np.ones((scale, scale) + (1,) * (grid.ndim - 2),
                                          dtype=np.uint8)))


def draw_samples(cset: CheckpointSet, label: str, timesteps: np.ndarray, n: int,
                 out: str | os.PathLike[str], grid: str | os.PathLike[str] | None = None,
                 eta: float = 1.0, seed: int = 0, device: str = "cpu",
                 progress: ProgressFn | None = None, variance: StepVariance | None = None
                 ) -> SampleRun:
    """Sample along ``timesteps`` and write the .npz (and PNG) atomically; ``variance``:
    the reverse variance of the steps (None: the set's own)."""
    t0 = time.perf_counter()
    out = Path(out)
    ensure_writable_dir(out.parent)
    if grid is not None:
        ensure_writable_dir(Path(grid).parent)
        if cset.manifest.data.levels is None:
            from ddpm_tools.io.plots import require_matplotlib

            require_matplotlib()
    g = torch.Generator().manual_seed(seed)
    x = sample(cset, timesteps, n, eta=eta, generator=g, device=device, progress=progress,
               variance=variance)
    levels = cset.manifest.data.levels
    arr = to_levels(x, levels) if levels is not None else x.numpy().astype(np.float32)
    write_samples_npz(out, arr, levels, cset.manifest.data.name)
    if grid is not None:
        write_picture(grid, arr, levels, title=f"{label} (K = {len(timesteps) - 1})")
    return SampleRun(out, Path(grid) if grid else None, label, len(timesteps) - 1, n, eta,
                     time.perf_counter() - t0)
