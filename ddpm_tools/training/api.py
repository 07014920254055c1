"""The training API behind ``ddpm-tools train`` and ``train-interval``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddpm_tools.data import load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.models import ArchConfig
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sets.manifest import read_manifest
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec, build_manifest, create_set
from ddpm_tools.training.joint import trains_jointly
from ddpm_tools.training.parallel import torchrun_train, train_set
from ddpm_tools.training.trainer import MemberResult, train_member


@dataclass(frozen=True)
class TrainReport:
    """What a training command did."""

    set_dir: Path  # the checkpoint set
    results: list[MemberResult]  # one per member handled by this process
    seconds: float  # wall-clock time of this call


def train(out: str | os.PathLike[str], data: str, spec: SetSpec, cfg: TrainConfig,
          workers: int = 1, device: str = "cpu", progress: ProgressFn | None = None,
          arch_config: ArchConfig | Sequence[ArchConfig] | None = None) -> TrainReport:
    """Create the set at ``out`` (or reuse an identical one) and train all its members
    (a multidecoder set jointly).

    ``arch_config`` overrides the architecture's defaults for every member, or gives one
    config per member (e.g. a decoder width per stage of a multidecoder set).
    """
    t0 = time.perf_counter()
    split = load_data(data, "train", seed=cfg.seed)
    create_set(out, build_manifest(spec, split, cfg, arch_config=arch_config))
    results = train_set(out, workers=workers, steps=cfg.steps, device=device,
                        progress=progress)
    return TrainReport(Path(out), results, time.perf_counter() - t0)


def train_interval(set_dir: str | os.PathLike[str], member: int | None, steps: int | None,
                   device: str = "cpu", progress: ProgressFn | None = None) -> TrainReport:
    """Train one member (``member`` index) or, with ``member=None``, this torchrun rank's.

    A multidecoder set is refused: its members train jointly (:func:`train`).
    """
    t0 = time.perf_counter()
    if read_manifest(set_dir).shared_encoder is not None:
        raise BadInputError(trains_jointly(set_dir))
    if member is None:
        _, results = torchrun_train(set_dir, steps, device, progress)
    else:
        n = len(read_manifest(set_dir).members)
        if not 0 <= member < n:
            raise BadInputError(f"--member {member} does not exist; {set_dir} has members "
                                f"0..{n - 1}")
        results = [train_member(set_dir, member, steps=steps, device=device,
                                progress=progress)]
    return TrainReport(Path(set_dir), results, time.perf_counter() - t0)
