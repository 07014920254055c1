"""Network architectures: their configs, the JSON boundary, construction and defaults.

Every network is called as ``net(x, t)`` with ``x: [B, *data_shape]`` float32 and
``t: [B]`` int64, the integer time in [1, T] (docs/DESIGN.md), and returns
``[B, out_factor*C, ...]`` (vectors: ``[B, out_factor*D]``). With ``out_factor = 2``
(learned_range variances) the first half of the channels is the prediction (eps, x0
or v) and the second half the raw variance output; the caller computes
v = (raw + 1)/2 (Nichol & Dhariwal 2021, eq. (15)); :func:`split_output` splits.

An architecture is chosen by its config's type; its name ("mlp" | "unet" |
"multidecoder") is used only at the JSON boundary (:func:`config_to_dict` /
:func:`config_from_dict`). A :class:`MultiDecoderConfig` describes one member of a
multidecoder set (shared encoder + this stage's decoder; :mod:`.multidecoder`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.models.mlp import MLPNet
from ddpm_tools.models.multidecoder import MultiDecoderNet, SharedEncoder, StageDecoder, StageNet
from ddpm_tools.models.unet import UNet, check_image_size

__all__ = [
    "ARCH_NAMES", "ArchConfig", "MLPConfig", "MultiDecoderConfig", "MultiDecoderNet",
    "SharedEncoder", "StageDecoder", "StageNet", "UNetConfig", "arch_name", "build_decoder",
    "build_encoder", "build_multidecoder", "build_network", "config_from_dict",
    "config_to_dict", "count_parameters", "default_config", "split_output",
]


def _check_int(cls: str, name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInputError(f"{cls}.{name} must be an integer >= {minimum} (got {value!r})")


def _int_tuple(cls: str, name: str, value: object, minimum: int, nonempty: bool
               ) -> tuple[int, ...]:
    ok = isinstance(value, tuple | list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok or (nonempty and not value):
        raise BadInputError(
            f"{cls}.{name} must be a {'non-empty ' if nonempty else ''}tuple of integers "
            f">= {minimum} (got {value!r})"
        )
    return tuple(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class MLPConfig:
    """A time-conditioned MLP for vector data ``[B, D]`` (:class:`~.mlp.MLPNet`)."""

    hidden: int = 128  # width of every hidden layer (units)
    depth: int = 3  # number of hidden layers, each with SiLU and the time embedding added
    time_dim: int = 64  # number of sinusoids embedding t (then an MLP to `hidden` units)

    def __post_init__(self) -> None:
        _check_int("MLPConfig", "hidden", self.hidden, 1)
        _check_int("MLPConfig", "depth", self.depth, 1)
        _check_int("MLPConfig", "time_dim", self.time_dim, 2)


@dataclass(frozen=True)
class UNetConfig:
    """A small U-Net for images ``[B, C, H, W]`` (:class:`~.unet.UNet`)."""

    base_channels: int = 32  # channels at full resolution; the time embedding has 4x this
    channel_mult: tuple[int, ...] = (1, 2)  # channels per level = base * mult; one level
    #   per entry, halving H and W between levels (H, W divisible by 2^(len - 1))
    num_res_blocks: int = 1  # residual blocks per level going down (one more going up)
    attention_resolutions: tuple[int, ...] = (4,)  # feature-map sizes in pixels (the
    #   smaller side) at which self-attention follows each block; () for none
    dropout: float = 0.0  # dropout probability inside residual blocks, in [0, 1)

    def __post_init__(self) -> None:
        _check_int("UNetConfig", "base_channels", self.base_channels, 1)
        object.__setattr__(self, "channel_mult", _int_tuple(
            "UNetConfig", "channel_mult", self.channel_mult, 1, nonempty=True))
        _check_int("UNetConfig", "num_res_blocks", self.num_res_blocks, 1)
        object.__setattr__(self, "attention_resolutions", _int_tuple(
            "UNetConfig", "attention_resolutions", self.attention_resolutions, 1,
            nonempty=False))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 <= d < 1.0:
            raise BadInputError(f"UNetConfig.dropout must be a number in [0, 1) (got {d!r})")
        object.__setattr__(self, "dropout", float(d))


@dataclass(frozen=True)
class MultiDecoderConfig:
    """One stage of a multi-decoder network (Zhang et al. 2024; :mod:`.multidecoder`): the
    shared encoder, identical in every member of the set, and this stage's decoder.

    MLP layers over the flattened input, for images and vectors alike.
    """

    hidden: int = 256  # width of the shared encoder's layers and of its time embedding (units)
    encoder_depth: int = 2  # hidden layers of the shared encoder
    decoder_width: int = 256  # width of this stage's decoder layers (units; may differ by stage)
    decoder_depth: int = 1  # hidden layers of this stage's decoder
    time_dim: int = 64  # number of sinusoids embedding t in the shared encoder

    def __post_init__(self) -> None:
        for name, minimum in (("hidden", 1), ("encoder_depth", 1), ("decoder_width", 1),
                              ("decoder_depth", 1), ("time_dim", 2)):
            _check_int("MultiDecoderConfig", name, getattr(self, name), minimum)

    @property
    def encoder_key(self) -> tuple[int, int, int]:
        """The fields the shared encoder depends on: (hidden, encoder_depth, time_dim)."""
        return (self.hidden, self.encoder_depth, self.time_dim)


ArchConfig = MLPConfig | UNetConfig | MultiDecoderConfig
_BY_NAME: dict[str, type[MLPConfig] | type[UNetConfig] | type[MultiDecoderConfig]] = {
    "mlp": MLPConfig, "unet": UNetConfig, "multidecoder": MultiDecoderConfig}
ARCH_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def arch_name(config: ArchConfig) -> str:
    """The JSON name of a config's architecture: "mlp", "unet" or "multidecoder"."""
    return next(name for name, cls in _BY_NAME.items() if isinstance(config, cls))


def config_to_dict(config: ArchConfig) -> dict[str, object]:
    """The config's fields as a JSON-able dict (tuples as lists); store ``arch_name`` beside it."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}


def config_from_dict(name: str, d: dict[str, object]) -> ArchConfig:
    """Inverse of :func:`config_to_dict` for architecture ``name``; lists become tuples.

    Fields missing from ``d`` take their defaults. Raises CheckpointError for an unknown
    architecture, an unknown field, or a field of the wrong type or range.
    """
    cls = _BY_NAME.get(name)
    if cls is None:
        raise CheckpointError(
            f"unknown architecture {name!r} in the checkpoint manifest; expected one of "
            f"{', '.join(ARCH_NAMES)} (was it written by a newer ddpm-tools?)"
        )
    if not isinstance(d, dict):
        raise CheckpointError(f"the {name} config in the checkpoint manifest is not a JSON "
                              "object; rewrite the manifest")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(
            f"unknown field {unknown[0]!r} in the {name} config of the checkpoint manifest; "
            f"known fields are {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = dict(d)
    try:
        return cls(**kwargs)
    except BadInputError as e:
        raise CheckpointError(f"bad {name} config in the checkpoint manifest: {e}") from None


def _check_shape(data_shape: tuple[int, ...], out_factor: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in data_shape)
    if out_factor not in (1, 2):
        raise BadInputError(f"out_factor must be 1 or 2 (got {out_factor!r})")
    if any(s < 1 for s in shape):
        raise BadInputError(f"data_shape {shape} has an empty dimension")
    return shape


def build_encoder(config: MultiDecoderConfig, data_shape: tuple[int, ...]) -> SharedEncoder:
    """A freshly initialised shared encoder of a multidecoder set."""
    return SharedEncoder(_check_shape(data_shape, 1), config.hidden, config.encoder_depth,
                         config.time_dim)


def build_decoder(config: MultiDecoderConfig, data_shape: tuple[int, ...], out_factor: int
                  ) -> StageDecoder:
    """A freshly initialised decoder of one stage (member) of a multidecoder set."""
    return StageDecoder(_check_shape(data_shape, out_factor), out_factor, config.hidden,
                        config.decoder_width, config.decoder_depth)


def build_multidecoder(configs: Sequence[MultiDecoderConfig], t_hi: Sequence[int],
                       data_shape: tuple[int, ...], out_factor: int) -> MultiDecoderNet:
    """The jointly trained network of a multidecoder set: one encoder, one decoder per
    stage k with ``configs[k]`` (their encoder fields must agree), stage k ending at
    ``t_hi[k]``."""
    if not configs or any(c.encoder_key != configs[0].encoder_key for c in configs):
        raise BadInputError("the stages of a multidecoder share one encoder, so their hidden, "
                            "encoder_depth and time_dim must agree")
    return MultiDecoderNet(build_encoder(configs[0], data_shape),
                           [build_decoder(c, data_shape, out_factor) for c in configs], t_hi)


def build_network(config: ArchConfig, data_shape: tuple[int, ...], out_factor: int
                  ) -> nn.Module:
    """A freshly initialised float32 network for ``data_shape`` (per example, no batch).

    MLPConfig and MultiDecoderConfig take vectors ``(D,)`` or flatten any other shape;
    UNetConfig needs images ``(C, H, W)``. A MultiDecoderConfig gives a :class:`StageNet`
    with an encoder of its own (a multidecoder set shares one: :func:`build_multidecoder`).
    ``out_factor`` is 1, or 2 for learned_range (prediction and raw variance).
    """
    shape = _check_shape(data_shape, out_factor)
    if isinstance(config, MLPConfig):
        return MLPNet(shape, out_factor, config.hidden, config.depth, config.time_dim)
    if isinstance(config, MultiDecoderConfig):
        return StageNet(build_encoder(config, shape), build_decoder(config, shape, out_factor))
    if len(shape) != 3:
        raise BadInputError(
            f"the unet architecture takes images (C, H, W) but the data has shape {shape}; "
            "use the mlp architecture for vectors"
        )
    return UNet((shape[0], shape[1], shape[2]), out_factor,
                base_channels=config.base_channels, channel_mult=config.channel_mult,
                num_res_blocks=config.num_res_blocks,
                attention_resolutions=config.attention_resolutions, dropout=config.dropout)


MAX_UNET_LEVELS = 3  # default U-Nets halve the image at most twice ...
MIN_FEATURE_SIZE = 4  # ... and never below 4x4 feature maps
MAX_ATTENTION_SIZE = 16  # default attention only at the lowest level, if at most 16x16


def default_config(arch: str, data_shape: tuple[int, ...]) -> ArchConfig:
    """Small, CPU-friendly defaults for ``arch`` ("mlp", "unet", "multidecoder" or "auto").

    "auto" picks mlp for vectors ``(D,)`` and unet for images ``(C, H, W)``. mlp:
    :class:`MLPConfig` with 4 units per input dimension (128..1024). multidecoder: the
    same width, a 2-layer shared encoder and 1-layer decoders (each member as deep and
    about as large as the mlp default). unet: base 32 channels, one res block per level, the
    most levels (<= 3) that keep H, W divisible and feature maps >= 4x4, channel_mult
    (1, 2[, 2]), attention at the lowest level if it is at most 16x16. E.g. 8x8 ->
    (1, 2) with attention at 4; 28x28 -> (1, 2, 2) at 7; 32x32 -> (1, 2, 2) at 8.
    """
    shape = tuple(int(s) for s in data_shape)
    if arch == "auto":
        arch = "mlp" if len(shape) == 1 else "unet"
    if arch in ("mlp", "multidecoder"):  # wider for larger (flattened) inputs
        dims = 1
        for d in shape:
            dims *= d
        width = min(1024, max(128, 4 * dims))
        if arch == "mlp":
            return MLPConfig(hidden=width)
        return MultiDecoderConfig(hidden=width, decoder_width=width)
    if arch != "unet":
        raise BadInputError(f"unknown architecture {arch!r}; choose mlp, unet, multidecoder "
                            "or auto")
    if len(shape) != 3:
        raise BadInputError(
            f"the unet architecture takes images (C, H, W) but the data has shape {shape}; "
            "use the mlp architecture for vectors"
        )
    _, h, w = shape
    levels = 1
    while levels < MAX_UNET_LEVELS:
        f = 2 ** levels
        if h % f or w % f or min(h, w) // f < MIN_FEATURE_SIZE:
            break
        levels += 1
    check_image_size(h, w, levels)
    low = min(h, w) // 2 ** (levels - 1)
    return UNetConfig(channel_mult=(1,) + (2,) * (levels - 1),
                      attention_resolutions=(low,) if low <= MAX_ATTENTION_SIZE else ())


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def split_output(out: torch.Tensor, channels: int, variance: str
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Network output ``[B, F*C, ...]`` -> (prediction ``[B, C, ...]``, raw variance or None).

    F = 2 for ``variance == "learned_range"``, else 1; ``channels`` is C (D for vectors).
    """
    factor = 2 if variance == "learned_range" else 1
    if out.dim() < 2 or out.shape[1] != factor * channels:
        raise BadInputError(
            f"the network output has shape {list(out.shape)} but {variance} variances with "
            f"{channels} data channels need {factor * channels} output channels; build the "
            f"network with out_factor={factor}"
        )
    if factor == 1:
        return out, None
    pred, raw = out.split(channels, dim=1)
    return pred, raw
