"""A checkpoint set on disk: its manifest, which member owns each t, and loading a member's
verified weights (sha256 against the manifest, strict state-dict keys).

The routing of (x_t, t) to members is :mod:`ddpm_tools.sets.denoiser`; reading a folder
(ddpm-tools set or diffusers layout) is :func:`ddpm_tools.sets.load.load_set`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.errors import CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.models import (
    MultiDecoderConfig,
    SharedEncoder,
    StageNet,
    build_decoder,
    build_encoder,
    build_network,
)
from ddpm_tools.models.openai_unet import OpenAIUNet, OpenAIUNetConfig
from ddpm_tools.sets.manifest import ExternalArch, Member, SetManifest

RETRAIN_MEMBER = "retrain the member with ddpm-tools train-interval"
RETRAIN_JOINT = "retrain the set with ddpm-tools train (multidecoder sets train jointly)"


def load_member_weights(path: Path, expected_sha256: str | None, where: str,
                        retrain: str = RETRAIN_MEMBER) -> dict[str, torch.Tensor]:
    """Read a member's safetensors file after checking its sha256 against the manifest;
    ``retrain`` ends the error messages (what to do)."""
    if not path.exists():
        raise CheckpointError(f"{where}: weights file {path} is missing; {retrain}")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise CheckpointError(
                f"{where}: weights file {path} has sha256 {got[:12]}…, the manifest records "
                f"{expected_sha256[:12]}…; the file was changed or corrupted, {retrain}"
            )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{where}: weights file {path} is corrupt or truncated ({e}); "
                              f"{retrain}") from None


def build_member(manifest: SetManifest, member: Member) -> torch.nn.Module:
    """An untrained network for ``member`` (architecture from the manifest)."""
    if isinstance(member.arch, ExternalArch):
        raise CheckpointError(f"member {member.index} is a {member.arch.library} "
                              f"{member.arch.model_class}; ddpm-tools loads it in place and "
                              "cannot build or train it")
    if isinstance(member.arch, OpenAIUNetConfig):  # an imported improved-/guided-diffusion net
        return OpenAIUNet(member.arch)
    return build_network(member.arch, manifest.data.shape, manifest.out_factor)


class CheckpointSet:
    """A validated checkpoint set on disk: its manifest and member lookup."""

    def __init__(self, path: str | os.PathLike[str], manifest: SetManifest):
        self.path = Path(path)
        self.manifest = manifest
        owner = np.full(manifest.T + 1, -1, dtype=np.int64)
        for m in manifest.members:
            owner[m.t_lo : m.t_hi + 1] = m.index
        self.owner = owner  # [T+1]: member index owning t; owner[0] = -1
        self._encoders: dict[str, SharedEncoder] = {}  # a multidecoder's encoder by device

    @property
    def schedule(self) -> NoiseSchedule:
        return self.manifest.schedule

    @property
    def T(self) -> int:
        return self.manifest.T

    @property
    def cache_dir(self) -> Path:
        """Folder of the set's cached cost tables: ``<set>/costs``."""
        return self.path / "costs"

    @property
    def clip_range(self) -> float | None:
        """x0_hat is clipped to [-clip_range, clip_range]; None: not clipped.

        1 (the data range) for discrete data with ``clip_x0``, else None.
        """
        man = self.manifest
        return 1.0 if man.data.levels is not None and man.clip_x0 else None

    def member_where(self, member: Member) -> str:
        return f"{self.path}, member {member.index} (t {member.t_lo}..{member.t_hi})"

    def check_trained(self) -> None:
        """Every member must have weights recorded; else say which one to train."""
        shared = self.manifest.shared_encoder
        if shared is not None and (shared.sha256 is None
                                   or any(m.sha256 is None for m in self.manifest.members)):
            raise CheckpointError(f"{self.path} is a multidecoder set without trained weights "
                                  "yet; train it with ddpm-tools train (its members train "
                                  "jointly)")
        for m in self.manifest.members:
            if m.sha256 is None:
                raise CheckpointError(
                    f"{self.member_where(m)} has no trained weights yet; run ddpm-tools "
                    f"train-interval --set {self.path} --member {m.index}"
                )

    def load_member(self, index: int, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Member ``index`` with its verified weights, in eval mode on ``device``."""
        m = self.manifest.members[index]
        where = self.member_where(m)
        if m.sha256 is None:
            self.check_trained()
        if self.manifest.shared_encoder is None:
            net = build_member(self.manifest, m)
            _load_state(net, load_member_weights(self.path / m.weights, m.sha256, where), where)
            if isinstance(net, OpenAIUNet):
                net.fit_precision(torch.device(device))
            return net.to(device).eval()
        if not isinstance(m.arch, MultiDecoderConfig):  # manifest validation rules this out
            raise CheckpointError(f"{where}: not a multidecoder member")
        man = self.manifest
        decoder = build_decoder(m.arch, man.data.shape, man.out_factor)
        _load_state(decoder, load_member_weights(self.path / m.weights, m.sha256, where,
                                                 RETRAIN_JOINT), where)
        return StageNet(self.shared_encoder(m.arch, device), decoder.to(device)).eval()

    def shared_encoder(self, config: MultiDecoderConfig, device: torch.device | str = "cpu"
                       ) -> SharedEncoder:
        """The multidecoder set's encoder, read and verified once per device, then shared
        by every member loaded on that device (one copy of its weights)."""
        key = str(torch.device(device))
        if key not in self._encoders:
            shared = self.manifest.shared_encoder
            if shared is None or shared.sha256 is None:
                self.check_trained()
                raise CheckpointError(f"{self.path} has no shared encoder")
            where = f"{self.path}, shared encoder"
            encoder = build_encoder(config, self.manifest.data.shape)
            _load_state(encoder, load_member_weights(self.path / shared.weights,
                                                     shared.sha256, where, RETRAIN_JOINT),
                        where)
            self._encoders[key] = encoder.to(device).eval()
        return self._encoders[key]


def _load_state(net: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``net.load_state_dict(state, strict=True)``, a mismatch as a CheckpointError."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise CheckpointError(f"{where}: weights do not fit the recorded architecture "
                              f"({first}); the manifest and weights disagree") from None
