"""Loading a checkpoint set and routing each (x_t, t) to the member that owns t.

:class:`Denoiser` is the one way the rest of the tool calls a trained set: given
x_t ``[B, ...]`` and integer t ``[B]`` (mixed t in one batch), it groups the rows
by owning member, runs each member once on its rows, and returns x0_hat (and the
variance interpolation v for learned_range). Members are loaded lazily and kept in
a bounded LRU cache, so a set of T = 1000 one-step members runs in bounded memory.
The members of a multidecoder set share one encoder module (one copy of its weights
per device), loaded once by the :class:`CheckpointSet`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ddpm_tools.core.diffusion import x0_from_prediction
from ddpm_tools.core.schedules import NoiseSchedule
from ddpm_tools.errors import CheckpointError
from ddpm_tools.fileio import sha256_file
from ddpm_tools.models import (
    MultiDecoderConfig,
    SharedEncoder,
    StageNet,
    build_decoder,
    build_encoder,
    build_network,
    split_output,
)
from ddpm_tools.sets.manifest import ExternalArch, Member, SetManifest, read_manifest

DEFAULT_MAX_LOADED = 16  # members kept in memory at once by a Denoiser
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
    return build_network(member.arch, manifest.data.shape, manifest.out_factor)


@dataclass(frozen=True)
class DenoiserOutput:
    """What a set predicts at (x_t, t)."""

    x0_hat: torch.Tensor  # [B, ...] in x_t's dtype; clipped to [-1, 1] for discrete data
    v: torch.Tensor | None  # [B, ...] variance interpolation (out + 1)/2; learned_range only


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


def load_set(path: str | os.PathLike[str], require_trained: bool = True) -> CheckpointSet:
    """Read and validate a checkpoint set; by default every member must be trained.

    A diffusers folder (``diffusers:PATH``, or a folder without ``ddpm_set.json`` in a
    diffusers layout) is read as a one-member set: :mod:`ddpm_tools.sets.diffusers_set`.
    """
    from ddpm_tools.sets.diffusers_set import find_diffusers_folder, load_diffusers_set

    folder = find_diffusers_folder(path)
    if folder is not None:
        return load_diffusers_set(folder)
    cset = CheckpointSet(path, read_manifest(path))
    if require_trained:
        cset.check_trained()
    return cset


class Denoiser:
    """Route x_t to the member owning each row's t; predict x0_hat (and v).

    Args:
        cset: the checkpoint set.
        device: where networks run; inputs are moved there and outputs come back
            on the input's device and dtype.
        max_loaded: members kept in memory (LRU); older ones are dropped.
    """

    def __init__(self, cset: CheckpointSet, device: torch.device | str = "cpu",
                 max_loaded: int = DEFAULT_MAX_LOADED):
        self.cset = cset
        self.device = torch.device(device)
        self.max_loaded = max(1, max_loaded)
        self._cache: OrderedDict[int, torch.nn.Module] = OrderedDict()
        self.loads = 0  # how many member loads happened (for tests and diagnostics)

    def member(self, index: int) -> torch.nn.Module:
        """The loaded network of member ``index`` (LRU-cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        net = self.cset.load_member(index, self.device)
        self.loads += 1
        self._cache[index] = net
        while len(self._cache) > self.max_loaded:
            self._cache.popitem(last=False)
        return net

    @torch.no_grad()
    def raw(self, x_t: torch.Tensor, t: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The networks' raw outputs ``[B, F*C, ...]`` for rows routed by ``t`` ``[B]``."""
        ta = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
        if ta.shape != (x_t.shape[0],):
            raise CheckpointError(f"t has shape {ta.shape}, expected ({x_t.shape[0]},)")
        self.cset.schedule.check_t(ta)
        owners = self.cset.owner[ta]
        x_dev = x_t.to(self.device, torch.float32)
        t_dev = torch.as_tensor(ta, device=self.device)
        out: torch.Tensor | None = None
        for idx in np.unique(owners):
            rows = np.flatnonzero(owners == idx)
            r = torch.as_tensor(rows, device=self.device)
            y = self.member(int(idx))(x_dev[r], t_dev[r])
            if out is None:
                out = torch.empty((x_t.shape[0],) + tuple(y.shape[1:]), device=self.device,
                                  dtype=y.dtype)
            out[r] = y
        assert out is not None
        return out.to(x_t.device, x_t.dtype)

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: np.ndarray | torch.Tensor) -> DenoiserOutput:
        """x0_hat ``[B, ...]`` (and v) in x_t's dtype for integer times ``t`` ``[B]``."""
        ta = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
        out = self.raw(x_t, ta)
        man = self.cset.manifest
        pred, raw_var = split_output(out, x_t.shape[1], man.variance)
        v = None if raw_var is None else (raw_var + 1) / 2  # Nichol & Dhariwal 2021, eq. (15)
        x0_hat = x0_from_prediction(man.schedule, man.prediction, x_t, ta, pred)
        r = self.cset.clip_range
        if r is not None:
            x0_hat = x0_hat.clamp(-r, r)
        return DenoiserOutput(x0_hat=x0_hat, v=v)
