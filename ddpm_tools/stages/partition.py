"""Partitions of [1, T] into member intervals (parallel score matching).

Haxholli & Lorenzi 2023 train one network per sub-interval of diffusion time;
how [1, T] is cut is a choice: ``uniform`` gives every member the same number of
timesteps, ``snr`` cuts at equal spacing in log-SNR, log(alpha_bar_t / (1 - alpha_bar_t))
(Kingma et al. 2021, eq. (3)), so that each member covers the same range of noise levels;
``cluster`` cuts where the optimal denoiser's task changes (Zhang et al. 2024, timestep
clustering, :mod:`ddpm_tools.stages.clustering`), which needs the training data.
"""

from __future__ import annotations

import numpy as np

from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError

PARTITIONS: tuple[str, ...] = ("uniform", "snr", "cluster")


def _check(T: int, n: int) -> None:
    if not 1 <= n <= T:
        raise BadInputError(
            f"--intervals must be between 1 and T = {T} (got {n}); each member owns at least "
            "one timestep"
        )


def _from_ends(ends: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (t_lo, t_hi) pairs from strictly increasing last times ``ends``."""
    starts = np.concatenate([[1], ends[:-1] + 1])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def partition_uniform(T: int, n: int) -> list[tuple[int, int]]:
    """[1, T] cut into ``n`` contiguous ranges whose sizes differ by at most one."""
    _check(T, n)
    ends = np.array([round(T * (i + 1) / n) for i in range(n)], dtype=np.int64)
    return _from_ends(ends)


def partition_snr(schedule: NoiseSchedule, n: int) -> list[tuple[int, int]]:
    """[1, T] cut at equally spaced log-SNR levels between log-SNR(1) and log-SNR(T).

    Each cut is the last t whose log-SNR is above the level; cuts are then made
    strictly increasing (at least one timestep per member) without leaving [1, T].
    """
    T = schedule.T
    _check(T, n)
    lab = schedule.log_alpha_bar[1:]
    log_snr = lab - np.log(-np.expm1(lab))  # decreasing in t
    levels = np.linspace(log_snr[0], log_snr[-1], n + 1)[1:-1]
    ends = [int(np.searchsorted(-log_snr, -lv, side="right")) for lv in levels]  # t with snr>=lv
    out: list[int] = []
    for i, e in enumerate(ends):
        lo = (out[-1] + 1) if out else 1
        hi = T - (n - 1 - i)  # leave one timestep for each remaining member
        out.append(min(max(e, lo), hi))
    out.append(T)
    return _from_ends(np.array(out, dtype=np.int64))


def make_partition(name: str, schedule: NoiseSchedule, n: int,
                   data: DataSplit | None = None) -> list[tuple[int, int]]:
    """Dispatch on the partition name (uniform, snr, cluster; cluster needs ``data``, the
    train split, and uses the defaults of :func:`ddpm_tools.stages.clustering.cluster_partition`
    with a grid of at least ``n`` times)."""
    if name == "uniform":
        return partition_uniform(schedule.T, n)
    if name == "snr":
        return partition_snr(schedule, n)
    if name == "cluster":
        _check(schedule.T, n)
        if data is None:
            raise BadInputError("the cluster partition needs the training data; pass the "
                                "train split as data=")
        from ddpm_tools.stages.clustering import DEFAULT_GRID, cluster_partition

        grid = min(schedule.T, max(DEFAULT_GRID, n))
        return list(cluster_partition(data, schedule, n, grid=grid).ranges)
    raise BadInputError(f"unknown partition {name!r}; choose one of {', '.join(PARTITIONS)}")
