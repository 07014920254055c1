"""Creating a checkpoint set: partition [1, T], choose architectures, write the manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ddpm_tools.core.diffusion import PREDICTIONS, VARIANCE_TYPES
from ddpm_tools.core.schedules import make_schedule
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError
from ddpm_tools.fileio import ensure_writable_dir
from ddpm_tools.models import ArchConfig, default_config
from ddpm_tools.sets.manifest import (
    MANIFEST_NAME,
    DataInfo,
    Member,
    MemberState,
    SetManifest,
    manifest_to_json,
    read_manifest,
    write_manifest,
)
from ddpm_tools.sets.partition import make_partition
from ddpm_tools.training.config import TrainConfig


@dataclass(frozen=True)
class SetSpec:
    """What ``ddpm-tools train`` creates."""

    intervals: int = 4  # number of members (1 = single-network baseline, T = one per step)
    partition: str = "uniform"  # how [1, T] is cut: uniform, snr or cluster
    arch: str = "auto"  # mlp, unet, or auto (mlp for vectors, unet for images)
    schedule: str = "linear"  # noise schedule: linear or cosine
    T: int = 1000  # diffusion steps
    prediction: str = "eps"  # network output: eps, x0 or v
    variance: str = "fixed_small"  # fixed_small, fixed_large or learned_range


def member_weights_name(index: int) -> str:
    """File name of member ``index``'s final weights inside the set folder."""
    return f"member_{index:04d}.safetensors"


def build_manifest(spec: SetSpec, data: DataSplit, train: TrainConfig,
                   arch_config: ArchConfig | None = None) -> SetManifest:
    """The manifest of a new, untrained set for ``data`` (a train split)."""
    if spec.prediction not in PREDICTIONS:
        raise BadInputError(f"unknown --prediction {spec.prediction!r}; choose eps, x0 or v")
    if spec.variance not in VARIANCE_TYPES:
        raise BadInputError(f"unknown --variance {spec.variance!r}; choose "
                            "fixed_small, fixed_large or learned_range")
    schedule = make_schedule(spec.schedule, spec.T)
    arch = spec.arch
    if arch == "auto":
        arch = "mlp" if len(data.shape) == 1 else "unet"
    if arch_config is None:
        arch_config = default_config(arch, data.shape)
    ranges = make_partition(spec.partition, schedule, spec.intervals, data=data)
    members = tuple(
        Member(index=i, t_lo=lo, t_hi=hi, arch=arch_config, weights=member_weights_name(i),
               state=MemberState(steps_target=train.steps))
        for i, (lo, hi) in enumerate(ranges)
    )
    return SetManifest(
        schedule=schedule,
        data=DataInfo(name=data.name, shape=tuple(data.shape), levels=data.levels),
        prediction=spec.prediction,
        variance=spec.variance,
        members=members,
        training={**train.to_json(), "partition": spec.partition},
    )


def _same_settings(a: SetManifest, b: SetManifest) -> bool:
    """Two manifests describe the same set, training progress aside."""
    def strip(m: SetManifest) -> dict[str, object]:
        j = manifest_to_json(replace(m, members=tuple(
            replace(mb, sha256=None, state=MemberState()) for mb in m.members)))
        j["training"] = {k: v for k, v in m.training.items() if k != "steps"}
        return j
    return strip(a) == strip(b)


def create_set(out: str | os.PathLike[str], manifest: SetManifest) -> SetManifest:
    """Write a new set's manifest, or reuse an existing identical set (to resume).

    An existing set with different settings is an error: training into it would mix
    two experiments.
    """
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        existing = read_manifest(out)
        if not _same_settings(existing, manifest):
            raise BadInputError(
                f"{out} already holds a checkpoint set with different settings; choose another "
                "--out or delete it"
            )
        return existing
    if out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out} exists and is not empty; choose a new --out folder")
    ensure_writable_dir(out)
    write_manifest(out, manifest)
    return manifest
