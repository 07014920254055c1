"""What a checkpoint set holds, with every member validated (``ddpm-tools inspect``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddpm_tools.models import arch_name, count_parameters
from ddpm_tools.models.openai_unet import ARCH_NAME as OPENAI_ARCH
from ddpm_tools.models.openai_unet import OpenAIUNetConfig
from ddpm_tools.sets.checkpoint_set import build_member
from ddpm_tools.sets.load import load_set
from ddpm_tools.sets.manifest import ExternalArch


@dataclass(frozen=True)
class MemberReport:
    index: int  # member index
    t_lo: int  # first time owned
    t_hi: int  # last time owned
    arch: str  # architecture name
    parameters: int  # trainable parameters
    steps_done: int  # steps trained
    steps_target: int  # steps planned
    final_loss: float | None  # last recorded training loss
    status: str  # "ok" (weights verified) or "untrained"


@dataclass(frozen=True)
class SetReport:
    path: Path
    T: int
    schedule: str
    prediction: str
    variance: str
    data: str
    shape: tuple[int, ...]
    levels: int | None
    members: list[MemberReport]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def inspect_set(path: str | os.PathLike[str]) -> SetReport:
    """Read the manifest and load every trained member (sha256, architecture fit).

    Any problem raises a CheckpointError naming the member; untrained members are
    reported as such.
    """
    cset = load_set(path, require_trained=False)  # a ddpm-tools set or a diffusers folder
    man = cset.manifest
    members = []
    for m in man.members:
        if m.sha256 is None:
            params, status = count_parameters(build_member(man, m)), "untrained"
        else:
            params, status = count_parameters(cset.load_member(m.index)), "ok"
        arch = (m.arch.model_class if isinstance(m.arch, ExternalArch)
                else OPENAI_ARCH if isinstance(m.arch, OpenAIUNetConfig) else arch_name(m.arch))
        members.append(MemberReport(m.index, m.t_lo, m.t_hi, arch, params,
                                    m.state.steps_done, m.state.steps_target,
                                    m.state.final_loss, status))
    return SetReport(Path(path), man.T, man.schedule.name, man.prediction, man.variance,
                     man.data.name, man.data.shape, man.data.levels, members)
