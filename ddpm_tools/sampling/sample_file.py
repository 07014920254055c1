"""``ddpm-tools sample``: draw samples, store them as .npz, draw a picture.

File format (read back by ``eval-samples``): an .npz with ``samples`` (images: uint8
level indices k in 0..levels-1, ``[N, C, H, W]``; 2-D data: float32 ``[N, D]``),
``levels`` (int; 0 for continuous data) and ``data`` (the set's data spec).
"""

from __future__ import annotations

import io
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_tools.core.limits import check_seed
from ddpm_tools.core.variances import StepVariance
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import atomic_write_bytes, check_output_file
from ddpm_tools.io.png import image_grid, write_png
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sampling.ancestral import sample, to_levels
from ddpm_tools.sets.checkpoint_set import CheckpointSet

NPZ_TIME = (1980, 1, 1, 0, 0, 0)  # the time stamp of every entry of a samples file
SAMPLE_BYTES_PER_VALUE = 24  # held at once per value: x_T and x (float64), the output


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


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(n: int, shape: tuple[int, ...], bytes_per_value: int, what: str,
               fix: str) -> None:
    """Refuse ``n`` examples of ``shape`` (``bytes_per_value`` bytes each value, all held at
    once) when they need more than this machine's physical memory."""
    need = n * math.prod(shape) * bytes_per_value
    mem = physical_memory()
    if mem is not None and need > mem:
        raise BadInputError(f"{what} would need {need / 1e9:,.1f} GB of memory, more than this "
                            f"machine's {mem / 1e9:,.1f} GB; {fix}")


def write_samples_npz(path: str | os.PathLike[str], samples: np.ndarray, levels: int | None,
                      data: str) -> None:
    """The samples file format of this module's docstring, written atomically."""
    buf = io.BytesIO()
    arrays = {"samples": samples, "levels": np.int64(levels or 0), "data": np.array(data)}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # numpy.savez's layout, but
        for name, a in arrays.items():  # a fixed time stamp: same samples, same bytes
            info = zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_TIME)
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
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
    check_seed(seed)
    if not 0.0 <= eta <= 1.0:  # also refuses nan
        raise BadInputError(f"--eta must be a number in [0, 1] (1 = ancestral, 0 = DDIM); "
                            f"got {eta}")
    if n < 1:
        raise BadInputError(f"--n must be at least 1 (got {n})")
    check_fits(n, cset.manifest.data.shape, SAMPLE_BYTES_PER_VALUE, f"sample --n {n}",
               "draw fewer samples (several runs with different --seed add up)")
    check_output_file(out, "samples file")
    if grid is not None:
        check_output_file(Path(grid), "picture")
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
