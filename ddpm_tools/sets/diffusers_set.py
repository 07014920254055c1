"""A local diffusers checkpoint folder read in place as a one-member checkpoint set.

Two layouts are read, offline only (nothing is fetched from the Hugging Face Hub):

* root: ``config.json`` (a ``UNet2DModel``), ``diffusion_pytorch_model.safetensors`` and
  ``scheduler_config.json`` in one folder (``unet.save_pretrained(d)`` and
  ``scheduler.save_pretrained(d)``);
* pipeline: ``model_index.json`` with ``unet/`` and ``scheduler/`` sub-folders
  (``DDPMPipeline.save_pretrained(d)``, or a downloaded snapshot of e.g.
  google/ddpm-cifar10-32).

The configs are translated by :mod:`ddpm_tools.sets.diffusers_config`. The data is
taken to be 8-bit images (256 levels) in [-1, 1], as ``DDPMPipeline`` outputs them
(``(x / 2 + 0.5) * 255``); a diffusers folder does not record its training data, so
commands that need data take ``--data``.

Time at the boundary: ddpm-tools calls a network with t in [1, T]; diffusers counts from
0, so the UNet gets index t - 1 (``alphas_cumprod[t - 1]`` is our alpha_bar_t).
Weights come from safetensors; a ``.bin`` file only through
``torch.load(weights_only=True)``, which refuses anything but tensors; nothing is unpickled.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ddpm_tools.errors import CheckpointError, MissingExtraError
from ddpm_tools.io.files import cache_root, read_json, sha256_file, torch_load_weights_only
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.diffusers_config import read_scheduler_config, read_unet_config
from ddpm_tools.sets.manifest import MANIFEST_NAME, DataInfo, ExternalArch, Member, SetManifest

PREFIX = "diffusers:"  # explicit form of --set for a diffusers folder
MODEL_INDEX = "model_index.json"  # pipeline layout marker
UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"  # read only with torch.load(weights_only=True)
COSTS_SUBDIR = "ddpm_tools_costs"  # cached cost tables inside a writable diffusers folder
IMAGE_LEVELS = 256  # the data of a diffusers DDPM: 8-bit images scaled to [-1, 1]
DATA_NAME = "unknown"  # a diffusers folder does not record its training data
EXTRA_HINT = "install the diffusers extra: pip install 'ddpm-tools[diffusers]'"
# old diffusers attention blocks (e.g. google/ddpm-*) -> the names UNet2DModel has now
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass(frozen=True)
class DiffusersFolder:
    """Where the parts of a diffusers checkpoint are."""

    root: Path  # the folder given to --set
    layout: str  # "root" (files side by side) or "pipeline" (unet/, scheduler/)
    unet_config: Path  # the UNet2DModel's config.json
    scheduler_config: Path  # scheduler_config.json
    weights: Path  # diffusion_pytorch_model.safetensors, else the .bin


def find_diffusers_folder(path: str | os.PathLike[str]) -> DiffusersFolder | None:
    """The diffusers folder named by ``path``, or None when ``path`` is not one.

    ``diffusers:PATH`` must be a diffusers folder; a plain folder counts as one when it
    has no ``ddpm_set.json`` but a diffusers file (config.json, model_index.json,
    scheduler_config.json or unet/). A folder that looks like one but is incomplete
    raises a CheckpointError naming what is missing.
    """
    text = os.fspath(path)
    explicit = text.startswith(PREFIX)
    root = Path(text[len(PREFIX):] if explicit else text).expanduser()
    if explicit and not root.is_dir():
        raise CheckpointError(f"diffusers folder {root} does not exist or is not a folder; "
                              "pass the folder holding the checkpoint after 'diffusers:'")
    markers = (UNET_CONFIG, MODEL_INDEX, SCHEDULER_CONFIG, "unet")
    if not explicit and (not root.is_dir() or (root / MANIFEST_NAME).exists()
                         or not any((root / m).exists() for m in markers)):
        return None
    return _locate(root)


def _locate(root: Path) -> DiffusersFolder:
    """The parts of the checkpoint in ``root`` (root or pipeline layout)."""
    if (root / MODEL_INDEX).exists() or (root / "unet").is_dir():
        if (root / MODEL_INDEX).exists():
            _check_model_index(root / MODEL_INDEX)
        layout, unet_dir, sched = "pipeline", root / "unet", root / "scheduler" / SCHEDULER_CONFIG
    else:
        layout, unet_dir, sched = "root", root, root / SCHEDULER_CONFIG
    for need in (unet_dir / UNET_CONFIG, sched):
        if not need.is_file():
            raise CheckpointError(
                f"{root} is neither a ddpm-tools checkpoint set (no {MANIFEST_NAME}) nor a "
                f"complete diffusers folder: {need.relative_to(root)} is missing; save the "
                "UNet and its scheduler with save_pretrained into the folder"
            )
    return DiffusersFolder(root, layout, unet_dir / UNET_CONFIG, sched, _weights(unet_dir))


def _check_model_index(path: Path) -> None:
    """The pipeline's UNet must be a UNet2DModel."""
    index = read_json(path, "diffusers model index")
    entry = index.get("unet") if isinstance(index, dict) else None
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    if cls != "UNet2DModel":
        raise CheckpointError(
            f"{path}: the pipeline's unet is {cls!r}, not a UNet2DModel; ddpm-tools reads "
            "unconditional UNet2DModel pipelines (DDPMPipeline)"
        )


def _weights(unet_dir: Path) -> Path:
    """The weights file: safetensors if present, else the .bin."""
    for name in (WEIGHTS_SAFETENSORS, WEIGHTS_BIN):
        if (unet_dir / name).is_file():
            return unet_dir / name
    others = sorted(p.name for p in unet_dir.glob("diffusion_pytorch_model*"))
    found = f" (found {', '.join(others)}: sharded or variant weights are not read)" \
        if others else ""
    raise CheckpointError(
        f"{unet_dir} has no {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN}{found}; save the UNet "
        "with save_pretrained(folder) as one safetensors file"
    )


# ------------------------------------------------------------------ the set

class ZeroBasedTime(nn.Module):
    """A diffusers UNet2DModel called as a ddpm-tools network: ``net(x, t)`` with t in [1, T].

    ``x: [B, C, H, W]`` float32, ``t: [B]`` int64 -> ``[B, out_channels, H, W]``; the UNet
    gets the 0-based index t - 1.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t - 1, return_dict=False)[0]


def read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a .bin through torch.load(weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch_load_weights_only(path)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{where}: weights file {path} holds pickled Python objects, not only tensors; "
            "ddpm-tools never unpickles objects: re-save the UNet with safetensors"
        ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{where}: weights file {path} cannot be read as tensors only ({first}); "
            "ddpm-tools never unpickles objects: re-save the UNet with safetensors"
        ) from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{where}: {path} does not hold a state dict of tensors; "
                              "re-save the UNet with save_pretrained")
    return state


def rename_legacy_attention(state: dict[str, torch.Tensor], expected: set[str]
                            ) -> dict[str, torch.Tensor]:
    """Old attention names (``query``, ``key``, ``value``, ``proj_attn``) -> today's
    (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) where the model expects those, as
    diffusers' own loader does for checkpoints such as google/ddpm-cifar10-32."""
    out = {}
    for k, v in state.items():
        prefix, _, rest = k.rpartition(".")  # rest: weight | bias
        mod, _, name = prefix.rpartition(".")
        new = f"{mod}.{LEGACY_ATTENTION[name]}.{rest}" if name in LEGACY_ATTENTION else k
        out[new if k not in expected and new in expected else k] = v
    return out


class DiffusersSet(CheckpointSet):
    """A diffusers folder read in place: one member (index 0) owning t = 1..T."""

    def __init__(self, folder: DiffusersFolder, manifest: SetManifest,
                 unet_config: dict[str, Any], clip: float | None):
        super().__init__(folder.root, manifest)
        self.folder = folder  # where config, scheduler config and weights are
        self.unet_config = unet_config  # the UNet2DModel config as read
        self._clip = clip  # clip_sample_range, or None without clip_sample

    @property
    def clip_range(self) -> float | None:
        """``clip_sample_range`` of the scheduler config (None without clip_sample)."""
        return self._clip

    @property
    def cache_dir(self) -> Path:
        """``<folder>/ddpm_tools_costs`` if writable, else a per-user cache keyed by the
        weights' sha256 (``$DDPM_TOOLS_CACHE`` or ``~/.cache/ddpm-tools``)."""
        local = self.path / COSTS_SUBDIR
        if os.access(local if local.is_dir() else self.path, os.W_OK):
            return local
        return cache_root() / "diffusers-costs" / str(self.manifest.members[0].sha256)[:16]

    def member_where(self, member: Member) -> str:
        return f"diffusers checkpoint {self.path} ({member.weights})"

    def load_member(self, index: int, device: torch.device | str = "cpu") -> nn.Module:
        """The UNet2DModel with its verified weights, called with t - 1, in eval mode."""
        m = self.manifest.members[index]
        where = self.member_where(m)
        if sha256_file(self.folder.weights) != m.sha256:
            raise CheckpointError(f"{where}: the weights file changed while in use; run the "
                                  "command again")
        try:
            from diffusers import UNet2DModel
        except ImportError:
            raise MissingExtraError(f"reading {self.path} needs diffusers; {EXTRA_HINT}") from None
        unet = UNet2DModel.from_config(self.unet_config)
        expected = set(unet.state_dict())
        state = rename_legacy_attention(read_weights(self.folder.weights, where), expected)
        try:
            unet.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else "mismatch"
            raise CheckpointError(f"{where}: the weights do not fit config.json ({first}); "
                                  "the folder's config and weights disagree") from None
        return ZeroBasedTime(unet).to(device).eval()


def load_diffusers_set(folder: DiffusersFolder) -> DiffusersSet:
    """Read the configs, hash the weights and return the one-member set."""
    try:
        import diffusers  # noqa: F401  (fail now, not at the first network call)
    except ImportError:
        raise MissingExtraError(f"{folder.root} is a diffusers folder; reading it needs "
                                f"diffusers: {EXTRA_HINT}") from None
    settings = read_scheduler_config(folder.scheduler_config)
    unet_config, shape = read_unet_config(folder.unet_config, settings)
    member = Member(
        index=0, t_lo=1, t_hi=settings.schedule.T,
        arch=ExternalArch("diffusers", "UNet2DModel",
                          str(folder.unet_config.relative_to(folder.root))),
        weights=str(folder.weights.relative_to(folder.root)),
        sha256=sha256_file(folder.weights),
    )
    manifest = SetManifest(
        schedule=settings.schedule, data=DataInfo(DATA_NAME, shape, IMAGE_LEVELS),
        prediction=settings.prediction, variance=settings.variance, members=(member,),
        clip_x0=settings.clip_range is not None,
    )
    return DiffusersSet(folder, manifest, unet_config, settings.clip_range)
