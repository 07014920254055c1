"""Creating a checkpoint set: partition [1, T], choose architectures, write the manifest.

A multidecoder set (``arch = "multidecoder"`` or MultiDecoderConfig members) also gets
the shared-encoder entry; it trains jointly (:mod:`ddpm_tools.training.joint`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ddpm_tools.core.diffusion import PREDICTIONS, VARIANCE_TYPES
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.files import ensure_writable_dir
from ddpm_tools.models import ArchConfig, MLPConfig, MultiDecoderConfig, UNetConfig, default_config
from ddpm_tools.sets.manifest import (
    MANIFEST_NAME,
    DataInfo,
    Member,
    MemberState,
    SetManifest,
    SharedWeights,
    manifest_to_json,
    read_manifest,
    write_manifest,
)
from ddpm_tools.stages.partition import make_partition
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.joint import STAGE_SAMPLING


@dataclass(frozen=True)
class SetSpec:
    """What ``ddpm-tools train`` creates."""

    intervals: int = 4  # number of members (1 = single-network baseline, T = one per step)
    partition: str = "uniform"  # how [1, T] is cut: uniform, snr or cluster
    arch: str = "auto"  # mlp, unet, multidecoder, or auto (mlp for vectors, unet for images)
    schedule: str = "linear"  # noise schedule: linear or cosine
    T: int = 1000  # diffusion steps
    prediction: str = "eps"  # network output: eps, x0 or v
    variance: str = "fixed_small"  # fixed_small, fixed_large or learned_range
    stage_sampling: str = "uniform"  # multidecoder only: each batch's stage drawn uniformly
    #   or in proportion to its number of timesteps ("length")


SHARED_ENCODER_WEIGHTS = "shared_encoder.safetensors"  # a multidecoder set's encoder file


def member_weights_name(index: int) -> str:
    """File name of member ``index``'s final weights inside the set folder."""
    return f"member_{index:04d}.safetensors"


def _member_configs(arch: str, arch_config: ArchConfig | Sequence[ArchConfig] | None,
                    shape: tuple[int, ...], n: int) -> tuple[ArchConfig, ...]:
    """One architecture config per member: the default of ``arch``, ``arch_config`` for
    every member, or ``arch_config[i]`` for member i."""
    if arch_config is None:
        return (default_config(arch, shape),) * n
    if isinstance(arch_config, MLPConfig | UNetConfig | MultiDecoderConfig):
        return (arch_config,) * n
    configs = tuple(arch_config)
    if len(configs) != n:
        raise BadInputError(f"{len(configs)} architecture configs for {n} members; give one "
                            "config for every member or one per member")
    stages = [c for c in configs if isinstance(c, MultiDecoderConfig)]
    if stages and (len(stages) != n or len({c.encoder_key for c in stages}) > 1):
        raise BadInputError("the members of a multidecoder set are all MultiDecoderConfigs "
                            "that share one encoder (equal hidden, encoder_depth, time_dim)")
    return configs


def build_manifest(spec: SetSpec, data: DataSplit, train: TrainConfig,
                   arch_config: ArchConfig | Sequence[ArchConfig] | None = None
                   ) -> SetManifest:
    """The manifest of a new, untrained set for ``data`` (a train split).

    ``arch_config``: one config for every member (default: ``spec.arch``'s defaults) or
    one per member (e.g. a decoder width per stage of a multidecoder set).
    """
    if spec.prediction not in PREDICTIONS:
        raise BadInputError(f"unknown --prediction {spec.prediction!r}; choose eps, x0 or v")
    if spec.variance not in VARIANCE_TYPES:
        raise BadInputError(f"unknown --variance {spec.variance!r}; choose "
                            "fixed_small, fixed_large or learned_range")
    schedule = make_schedule(spec.schedule, spec.T)
    arch = spec.arch
    if arch == "auto":
        arch = "mlp" if len(data.shape) == 1 else "unet"
    ranges = make_partition(spec.partition, schedule, spec.intervals, data=data)
    configs = _member_configs(arch, arch_config, tuple(data.shape), len(ranges))
    multi = isinstance(configs[0], MultiDecoderConfig)
    if spec.stage_sampling not in STAGE_SAMPLING:
        raise BadInputError(f"unknown --stage-sampling {spec.stage_sampling!r}; choose "
                            f"{' or '.join(STAGE_SAMPLING)}")
    if spec.stage_sampling != "uniform" and not multi:
        raise BadInputError("--stage-sampling applies to --arch multidecoder only")
    members = tuple(
        Member(index=i, t_lo=lo, t_hi=hi, arch=configs[i], weights=member_weights_name(i),
               state=MemberState(steps_target=train.steps))
        for i, (lo, hi) in enumerate(ranges)
    )
    training: dict[str, object] = {**train.to_json(), "partition": spec.partition}
    if multi:
        training["stage_sampling"] = spec.stage_sampling
    return SetManifest(
        schedule=schedule,
        data=DataInfo(name=data.name, shape=tuple(data.shape), levels=data.levels),
        prediction=spec.prediction,
        variance=spec.variance,
        members=members,
        training=training,
        shared_encoder=SharedWeights(SHARED_ENCODER_WEIGHTS) if multi else None,
    )


def _same_settings(a: SetManifest, b: SetManifest) -> bool:
    """Two manifests describe the same set, training progress aside."""
    def strip(m: SetManifest) -> dict[str, object]:
        shared = m.shared_encoder and replace(m.shared_encoder, sha256=None)
        j = manifest_to_json(replace(m, shared_encoder=shared, members=tuple(
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
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file; a checkpoint set is a folder, choose a "
                            "new folder path")
    if out.exists() and any(out.iterdir()):
        raise BadInputError(f"{out} exists and is not empty; choose a new --out folder")
    ensure_writable_dir(out)
    write_manifest(out, manifest)
    return manifest
