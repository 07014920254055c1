"""``partition`` as one call: check the options, load the train split, cluster the
timesteps of a noise schedule (:func:`ddpm_tools.stages.clustering.cluster_partition`) and
draw the similarity matrix.
"""

from __future__ import annotations

from pathlib import Path

from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.data import load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.plots import check_plot_target
from ddpm_tools.progress import ProgressFn
from ddpm_tools.stages.clustering import (
    DEFAULT_ALPHA,
    DEFAULT_ETA,
    DEFAULT_GRID,
    DEFAULT_MAX_REFERENCE,
    DEFAULT_SAMPLES,
    ClusterResult,
    cluster_partition,
)


def partition_data(
    data: str, stages: int, *,
    T: int = 1000,  # diffusion steps
    schedule: str = "linear",  # noise schedule name: linear or cosine
    samples: int = DEFAULT_SAMPLES,  # (x_0, eps) draws averaged in the similarity
    eta: float = DEFAULT_ETA,  # per-coordinate agreement tolerance, output units
    alpha: float | None = None,  # threshold of method "threshold" (None: DEFAULT_ALPHA)
    method: str = "dp",  # "dp" (exact segmentation) or "threshold" (the paper's rule)
    objective: str = "ratio",  # segmentation objective of method "dp"
    target: str = "x0",  # compared output: "x0" or "eps"
    grid: int = DEFAULT_GRID,  # times compared, evenly spaced over [1, T]
    max_reference: int = DEFAULT_MAX_REFERENCE,  # subsample larger training sets
    plot: Path | None = None,  # also draw the similarity matrix here (.png, .pdf, .svg)
    seed: int = 0,  # seed of the split's order and of the draws
    progress: ProgressFn | None = None,
) -> ClusterResult:
    """Stages of [1, T] for the train split of ``data`` (Zhang et al. 2024, timestep
    clustering); the picture goes to ``plot`` when given."""
    if alpha is not None and method != "threshold":
        raise BadInputError("--alpha is the cut-off of the threshold rule; add --method "
                            "threshold or drop --alpha")
    if plot is not None:
        check_plot_target(plot)
    sched = make_schedule(schedule, T)
    split = load_data(data, "train", seed=seed)
    res = cluster_partition(
        split, sched, stages, samples=samples, eta=eta,
        alpha=DEFAULT_ALPHA if alpha is None else alpha, grid=grid, method=method,
        objective=objective, target=target, max_reference=max_reference, seed=seed,
        progress=progress)
    if plot is not None:
        from ddpm_tools.stages.plot import similarity_png  # needs the plot extra

        similarity_png(res, plot)
    return res
