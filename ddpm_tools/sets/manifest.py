"""The checkpoint-set manifest ``ddpm_set.json``: what a set is, and its validation.

A checkpoint set is a folder with ``ddpm_set.json`` and one safetensors weights file
per member (docs/DESIGN.md, "Checkpoint set"). Members own inclusive time ranges
[t_lo, t_hi] that tile [1, T] exactly. Training state per member lives in the
manifest too; concurrent writers (parallel workers, job-array elements) update it
under an exclusive file lock (:func:`update_manifest`).

A multidecoder set (Zhang et al. 2024; :mod:`ddpm_tools.models.multidecoder`) stores
its shared encoder once, in the file named by the optional ``shared_encoder`` entry
(with its sha256); each member's file then holds only that member's decoder.
Manifests without the entry (every other set) read as before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ddpm_tools.core.diffusion import PREDICTIONS, VARIANCE_TYPES
from ddpm_tools.core.noise_schedule import NoiseSchedule, schedule_from_spec
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import atomic_write_json, file_lock, read_json
from ddpm_tools.models import (
    ArchConfig,
    MultiDecoderConfig,
    arch_name,
    config_from_dict,
    config_to_dict,
)
from ddpm_tools.models.openai_unet import ARCH_NAME as OPENAI_ARCH
from ddpm_tools.models.openai_unet import (
    OpenAIUNetConfig,
    openai_config_from_dict,
    openai_config_to_dict,
)

MANIFEST_NAME = "ddpm_set.json"
LOCK_NAME = ".ddpm_set.lock"
FORMAT = "ddpm-tools/checkpoint-set"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MemberState:
    """Training state of one member, as recorded in the manifest."""

    steps_done: int = 0  # optimizer steps completed and saved in the final weights
    steps_target: int = 0  # steps the member is meant to train for
    final_loss: float | None = None  # mean training loss over the last logging window
    seconds: float = 0.0  # wall-clock training time, summed over resumed runs


@dataclass(frozen=True)
class ExternalArch:
    """A network defined by another library and read in place (a diffusers folder).

    ddpm-tools neither builds, trains nor writes such a member; the set holding it
    loads it (:class:`ddpm_tools.sets.diffusers_set.DiffusersSet`).
    """

    library: str  # the library that defines the network: "diffusers"
    model_class: str  # its class in that library, e.g. "UNet2DModel"
    config: str  # the network's config file, relative to the set folder


@dataclass(frozen=True)
class Member:
    """One network of the set; it owns the integer times t_lo..t_hi (inclusive)."""

    index: int  # position in the set, 0-based
    t_lo: int  # first time owned, 1 <= t_lo
    t_hi: int  # last time owned, t_hi <= T
    arch: ArchConfig | ExternalArch | OpenAIUNetConfig  # our architecture and its config, an
    #   external network, or an imported improved-/guided-diffusion U-Net
    weights: str  # weights file name inside the set folder (safetensors)
    sha256: str | None = None  # sha256 of the weights file; None until trained
    state: MemberState = field(default_factory=MemberState)


@dataclass(frozen=True)
class DataInfo:
    """What the set was trained on."""

    name: str  # data spec as given to --data (digits, 8gaussians, npz:PATH, ...)
    shape: tuple[int, ...]  # per-example shape: (2,) for vectors, (C, H, W) for images
    levels: int | None  # discrete levels per dimension (17, 256) or None for continuous data


@dataclass(frozen=True)
class SharedWeights:
    """Weights every member uses, stored once: the encoder of a multidecoder set."""

    weights: str  # weights file name inside the set folder (safetensors)
    sha256: str | None = None  # sha256 of the weights file; None until trained


@dataclass(frozen=True)
class SetManifest:
    """Everything ``ddpm_set.json`` records (docs/DESIGN.md, "Checkpoint set")."""

    schedule: NoiseSchedule  # beta schedule (name + the explicit betas)
    data: DataInfo  # data shape and levels
    prediction: str  # network output: eps, x0 or v
    variance: str  # fixed_small, fixed_large or learned_range
    members: tuple[Member, ...]  # tile [1, T] in order
    clip_x0: bool = True  # clip x0_hat to [-1, 1] (discrete data only)
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig as JSON (provenance)
    shared_encoder: SharedWeights | None = None  # multidecoder sets only: the shared weights

    @property
    def T(self) -> int:
        return self.schedule.T

    @property
    def out_factor(self) -> int:
        """Output channels per data channel: 2 with a learned variance, else 1."""
        return 2 if self.variance == "learned_range" else 1


def check_tiling(members: tuple[Member, ...] | list[Member], T: int, where: str) -> None:
    """Members must tile [1, T] in order: t_lo of the first is 1, each next t_lo is the
    previous t_hi + 1, the last t_hi is T."""
    if not members:
        raise CheckpointError(f"{where}: the set has no members; a set needs at least one")
    expected = 1
    for m in members:
        if m.t_lo > m.t_hi:
            raise CheckpointError(
                f"{where}: member {m.index} has t_lo = {m.t_lo} > t_hi = {m.t_hi}; "
                "a member owns a non-empty range"
            )
        if m.t_lo != expected:
            kind = "gap" if m.t_lo > expected else "overlap"
            raise CheckpointError(
                f"{where}: members leave a {kind} at t = {min(expected, m.t_lo)} "
                f"(member {m.index} starts at {m.t_lo}, expected {expected}); members must "
                f"tile [1, {T}] with no gap or overlap"
            )
        expected = m.t_hi + 1
    if expected != T + 1:
        raise CheckpointError(
            f"{where}: the last member ends at t = {expected - 1} but T = {T}; members must "
            f"tile [1, {T}] exactly"
        )


def check_shared_encoder(members: tuple[Member, ...] | list[Member],
                         shared: SharedWeights | None, where: str) -> None:
    """A set has a shared encoder exactly when its members are multidecoder stages, and
    then their encoder fields (hidden, encoder_depth, time_dim) agree."""
    stages = [m.arch for m in members if isinstance(m.arch, MultiDecoderConfig)]
    if shared is None and not stages:
        return
    if shared is None or len(stages) != len(members):
        raise CheckpointError(
            f"{where}: a set with a shared encoder must consist of multidecoder members and "
            "multidecoder members need the shared_encoder entry; re-create the set with "
            "ddpm-tools train --arch multidecoder"
        )
    keys = {c.encoder_key for c in stages}
    if len(keys) > 1:
        raise CheckpointError(
            f"{where}: the multidecoder members disagree on the shared encoder (hidden, "
            f"encoder_depth, time_dim: {sorted(keys)}); give every member the same encoder"
        )
    if Path(shared.weights).name != shared.weights:
        raise CheckpointError(f"{where}: shared encoder file {shared.weights!r} must be a "
                              "plain file name")


def _arch_fields(mb: Member) -> dict[str, object]:
    """The ``arch`` and ``config`` entries of a member in ``ddpm_set.json``."""
    if isinstance(mb.arch, ExternalArch):
        raise CheckpointError(
            f"member {mb.index} is a {mb.arch.library} {mb.arch.model_class} read in place; "
            "ddpm-tools writes no manifest for another library's checkpoint"
        )
    if isinstance(mb.arch, OpenAIUNetConfig):
        return {"arch": OPENAI_ARCH, "config": openai_config_to_dict(mb.arch)}
    return {"arch": arch_name(mb.arch), "config": config_to_dict(mb.arch)}


def _arch_from_json(name: str, config: dict[str, Any]) -> ArchConfig | OpenAIUNetConfig:
    """A member's architecture config from its ``arch`` and ``config`` entries."""
    if name == OPENAI_ARCH:
        return openai_config_from_dict(config)
    return config_from_dict(name, config)


def manifest_to_json(m: SetManifest) -> dict[str, Any]:
    """The JSON object written to ``ddpm_set.json``."""
    shared = {} if m.shared_encoder is None else {"shared_encoder": asdict(m.shared_encoder)}
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "schedule": m.schedule.to_spec(),
        "data": {"name": m.data.name, "shape": list(m.data.shape), "levels": m.data.levels},
        "prediction": m.prediction,
        "variance": m.variance,
        "clip_x0": m.clip_x0,
        "members": [
            {
                "index": mb.index,
                "t_lo": mb.t_lo,
                "t_hi": mb.t_hi,
                **_arch_fields(mb),
                "weights": mb.weights,
                "sha256": mb.sha256,
                "state": asdict(mb.state),
            }
            for mb in m.members
        ],
        **shared,
        "training": m.training,
    }


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise CheckpointError(f"{where}: missing field {key!r}; the manifest is incomplete")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise CheckpointError(f"{where}: field {key!r} has the wrong type ({type(v).__name__})")
    return v


def manifest_from_json(obj: Any, where: str) -> SetManifest:
    """Parse and validate a manifest object; every problem is one sentence naming ``where``."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a ddpm-tools checkpoint-set manifest")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version!r}, this ddpm-tools reads version "
            f"{FORMAT_VERSION}; upgrade ddpm-tools or re-create the set"
        )
    try:
        schedule = schedule_from_spec(_get(obj, "schedule", dict, where))
    except BadInputError as e:
        raise CheckpointError(f"{where}: bad noise schedule: {e}") from None
    d = _get(obj, "data", dict, where)
    levels = d.get("levels")
    if levels is not None and (not isinstance(levels, int) or levels < 2):
        raise CheckpointError(f"{where}: data levels must be an integer >= 2 or null")
    data = DataInfo(str(_get(d, "name", str, where)),
                    tuple(int(x) for x in _get(d, "shape", list, where)), levels)
    prediction = _get(obj, "prediction", str, where)
    if prediction not in PREDICTIONS:
        raise CheckpointError(f"{where}: unknown prediction {prediction!r}; expected eps, x0 or v")
    variance = _get(obj, "variance", str, where)
    if variance not in VARIANCE_TYPES:
        raise CheckpointError(f"{where}: unknown variance type {variance!r}")
    members = []
    for i, mj in enumerate(_get(obj, "members", list, where)):
        mw = f"{where}, member {i}"
        if not isinstance(mj, dict):
            raise CheckpointError(f"{mw}: not an object")
        st = mj.get("state") or {}
        try:
            state = MemberState(**st)
        except TypeError:
            raise CheckpointError(f"{mw}: unknown training-state fields") from None
        weights = _get(mj, "weights", str, mw)
        if Path(weights).name != weights:
            raise CheckpointError(f"{mw}: weights file {weights!r} must be a plain file name")
        members.append(Member(
            index=i,
            t_lo=_get(mj, "t_lo", int, mw),
            t_hi=_get(mj, "t_hi", int, mw),
            arch=_arch_from_json(_get(mj, "arch", str, mw), _get(mj, "config", dict, mw)),
            weights=weights,
            sha256=mj.get("sha256"),
            state=state,
        ))
    check_tiling(members, schedule.T, where)
    shared = None
    if obj.get("shared_encoder") is not None:
        sj = _get(obj, "shared_encoder", dict, where)
        sha = sj.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise CheckpointError(f"{where}: the shared encoder's sha256 must be a string or "
                                  "null")
        shared = SharedWeights(_get(sj, "weights", str, f"{where}, shared_encoder"), sha)
    check_shared_encoder(members, shared, where)
    return SetManifest(schedule=schedule, data=data, prediction=prediction, variance=variance,
                       members=tuple(members), clip_x0=bool(obj.get("clip_x0", True)),
                       training=dict(obj.get("training") or {}), shared_encoder=shared)


def read_manifest(set_dir: str | os.PathLike[str]) -> SetManifest:
    """Read and validate ``set_dir/ddpm_set.json``."""
    p = Path(set_dir)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint set {p} does not exist or is not a folder; "
                              "create one with ddpm-tools train")
    mp = p / MANIFEST_NAME
    if not mp.exists():
        raise CheckpointError(f"{p} has no {MANIFEST_NAME}; it is not a checkpoint set")
    return manifest_from_json(read_json(mp, "manifest"), str(mp))


def write_manifest(set_dir: str | os.PathLike[str], m: SetManifest) -> None:
    """Write ``ddpm_set.json`` atomically (validating the tiling first)."""
    check_tiling(m.members, m.T, str(set_dir))
    check_shared_encoder(m.members, m.shared_encoder, str(set_dir))
    atomic_write_json(Path(set_dir) / MANIFEST_NAME, manifest_to_json(m))


def manifest_lock(set_dir: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """An exclusive advisory lock on the set (``flock`` on ``.ddpm_set.lock``)."""
    return file_lock(Path(set_dir) / LOCK_NAME)


def update_manifest(set_dir: str | os.PathLike[str],
                    change: Callable[[SetManifest], SetManifest]) -> SetManifest:
    """Read-modify-write the manifest under the set's lock; returns the new manifest."""
    with manifest_lock(set_dir):
        m = change(read_manifest(set_dir))
        write_manifest(set_dir, m)
        return m


def with_member(m: SetManifest, index: int, **changes: Any) -> SetManifest:
    """A copy of ``m`` whose member ``index`` has ``changes`` applied."""
    members = list(m.members)
    members[index] = replace(members[index], **changes)
    return replace(m, members=tuple(members))
