"""The U-Net of OpenAI's improved-diffusion and guided-diffusion (ADM), re-implemented so
that their checkpoints load with strict key and shape matching.

Architecture (Nichol & Dhariwal 2021, Sec. 3 and App. A; Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs", Sec. 3): a U-Net of residual blocks with GroupNorm(32),
SiLU and a sinusoidal time embedding (4 x model_channels wide) added to each block, or
applied as a scale and shift after the block's second norm (``use_scale_shift_norm``);
multi-head self-attention at the listed downsampling rates and always in the middle;
a skip from every encoder block to the decoder. guided-diffusion adds a head width
(``num_head_channels``), residual blocks that resample (``resblock_updown``), the
"new" qkv split order (``use_new_attention_order``) and float16 torsos (``use_fp16``).

Module names follow the originals' state-dict keys (``input_blocks.1.0.in_layers.2.weight``,
``middle_block.1.qkv.bias``, ``out.2.weight``, ...): modules without parameters keep
their position in each ``nn.Sequential`` so that the indices agree.

Time at the boundary (docs/DESIGN.md, "Time"): :class:`OpenAIUNet` is called with the
ddpm-tools time t in [1, T]; the original network sees the 0-based index t - 1, times
1000 / T when the diffusion was built with ``rescale_timesteps`` (their
``_scale_timesteps``), in float32 as there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ddpm_tools.errors import BadInputError, CheckpointError

ARCH_NAME = "openai-unet"  # the member's "arch" in ddpm_set.json
NORM_GROUPS = 32  # GroupNorm groups of every normalisation layer
MAX_PERIOD = 10000  # lowest frequency of the sinusoidal time embedding
RESCALED_STEPS = 1000.0  # rescale_timesteps: the network sees t_index * 1000 / T


@dataclass(frozen=True)
class OpenAIUNetConfig:
    """An improved-diffusion or guided-diffusion ``UNetModel`` and its time convention.

    Built from the projects' command-line flags by :mod:`ddpm_tools.sets.openai_import`.
    """

    project: str  # "improved-diffusion" or "guided-diffusion" (the flags' source)
    image_size: int  # H = W of the images, pixels
    in_channels: int  # data channels C (3 for RGB)
    model_channels: int  # --num_channels: width at full resolution
    out_channels: int  # C, or 2 C with learned sigmas (prediction, then the raw variance)
    num_res_blocks: int  # residual blocks per level going down (one more going up)
    attention_ds: tuple[int, ...]  # downsampling rates (image_size // resolution) with attention
    channel_mult: tuple[float, ...]  # width multiplier per level (0.5 occurs at 512x512)
    num_heads: int = 1  # attention heads (when num_head_channels == -1)
    num_head_channels: int = -1  # channels per head (guided-diffusion), -1: use num_heads
    num_heads_upsample: int = -1  # heads in the decoder's attention, -1: num_heads
    use_scale_shift_norm: bool = True  # time embedding as scale and shift after the norm
    resblock_updown: bool = False  # resample with residual blocks (guided-diffusion)
    use_new_attention_order: bool = False  # split q, k, v before the heads (guided-diffusion)
    use_fp16: bool = False  # torso in float16 where the device supports it (CUDA)
    num_timesteps: int = 1000  # T of the diffusion the network was trained with
    rescale_timesteps: bool = False  # the network sees (t - 1) * 1000 / T instead of t - 1

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "model_channels", "out_channels",
                     "num_res_blocks", "num_heads", "num_timesteps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BadInputError(f"OpenAIUNetConfig.{name} must be an integer >= 1 "
                                    f"(got {v!r})")
        if self.project not in ("improved-diffusion", "guided-diffusion"):
            raise BadInputError(f"OpenAIUNetConfig.project must be improved-diffusion or "
                                f"guided-diffusion (got {self.project!r})")
        object.__setattr__(self, "attention_ds", tuple(int(d) for d in self.attention_ds))
        object.__setattr__(self, "channel_mult", tuple(float(m) for m in self.channel_mult))
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise BadInputError("OpenAIUNetConfig.channel_mult must be non-empty and positive")
        for c in self.widths():
            if c % NORM_GROUPS:
                raise BadInputError(
                    f"a level of {c} channels cannot be normalised in {NORM_GROUPS} groups; "
                    "--num_channels times each channel multiplier must be a multiple of 32")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise BadInputError(
                f"image size {self.image_size} is not divisible by "
                f"{2 ** (len(self.channel_mult) - 1)} (the U-Net's total downsampling)")

    def widths(self) -> list[int]:
        """Channels of each level: ``int(mult * model_channels)``."""
        return [int(m * self.model_channels) for m in self.channel_mult]

    def heads(self, channels: int, upsample: bool) -> int:
        """Attention heads of a block with ``channels`` channels."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise BadInputError(f"{channels} attention channels are not divisible by "
                                    f"--num_head_channels {self.num_head_channels}")
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads


def openai_config_to_dict(cfg: OpenAIUNetConfig) -> dict[str, object]:
    """The config as JSON (tuples as lists), stored next to ``"arch": "openai-unet"``."""
    return {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v
            for f in dataclasses.fields(cfg)}


def openai_config_from_dict(d: dict[str, Any]) -> OpenAIUNetConfig:
    """Inverse of :func:`openai_config_to_dict`; a bad entry is a CheckpointError."""
    known = {f.name for f in dataclasses.fields(OpenAIUNetConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"unknown field {unknown[0]!r} in the {ARCH_NAME} config of the "
                              "checkpoint manifest; re-import the checkpoint")
    try:
        return OpenAIUNetConfig(**d)
    except (BadInputError, TypeError, ValueError) as e:
        raise CheckpointError(f"bad {ARCH_NAME} config in the checkpoint manifest ({e}); "
                              "re-import the checkpoint") from None


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` float32 of (possibly fractional) times ``t: [B]``.

    [cos(t f_0), ..., cos(t f_{h-1}), sin(t f_0), ..., sin(t f_{h-1})] with h = dim // 2
    and f_i = MAX_PERIOD^(-i/h) (Vaswani et al. 2017, Sec. 3.5, in the originals' order);
    a zero column is appended for odd ``dim``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels)


class Resample(nn.Module):
    """Nearest x2 upsampling or x2 downsampling (3x3 stride-2 conv, or average pooling).

    ``x: [B, C, H, W]`` -> ``[B, C, 2H, 2W]`` (up) or ``[B, C, H/2, W/2]`` (down).
    With ``use_conv`` the parameters are ``conv`` (up) or ``op`` (down), as in the originals.
    """

    def __init__(self, channels: int, up: bool, use_conv: bool):
        super().__init__()
        self.up = up
        self.use_conv = use_conv
        if up and use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif not up:
            self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                       else nn.AvgPool2d(2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.up:
            return self.op(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding; may change width or resample.

    ``x: [B, C_in, H, W]``, ``emb: [B, E]`` -> ``[B, C_out, H', W']``.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int,
                 scale_shift: bool, resample: str | None = None):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = resample  # None, "up" or "down" (guided-diffusion's resblock_updown)
        if resample is not None:
            self.h_upd = Resample(channels, up=resample == "up", use_conv=False)
            self.x_upd = Resample(channels, up=resample == "up", use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Identity(),  # dropout
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels
            else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:  # norm and SiLU, resample h and x alike, then the conv
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:  # FiLM-like: norm(h) (1 + scale) + shift
            scale, shift = e.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + e))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    ``x: [B, C, H, W]`` -> same shape. ``qkv`` is a 1x1 conv to 3C channels; the legacy
    order (improved-diffusion, guided-diffusion by default) reads them per head as
    [q_h, k_h, v_h], the new order as [q_all, k_all, v_all]. Attention weights
    softmax(q.k / sqrt(c)) with the scale split over q and k, softmax in float32.
    """

    def __init__(self, channels: int, heads: int, new_order: bool):
        super().__init__()
        self.heads = heads
        self.new_order = new_order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # [B, 3C, N]
        n, ch = qkv.shape[2], c // self.heads
        if self.new_order:
            q, k, v = (z.reshape(b * self.heads, ch, n) for z in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, n).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        h = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, n)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; residual blocks also get the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class OpenAIUNet(nn.Module):
    """improved-/guided-diffusion ``UNetModel`` called as ``net(x, t)``, t in [1, T].

    ``x: [B, C, H, W]`` float32, ``t: [B]`` int64 -> ``[B, out_channels, H, W]`` float32.
    """

    def __init__(self, cfg: OpenAIUNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, ss = cfg.model_channels, cfg.use_scale_shift_norm
        emb = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        widths = cfg.widths()
        ch = widths[0]
        self.input_blocks = nn.ModuleList(
            [TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, width, ss)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(self._attention(ch, upsample=False))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(widths) - 1:
                down = (ResBlock(ch, emb, ch, ss, "down") if cfg.resblock_updown
                        else Resample(ch, up=False, use_conv=True))
                self.input_blocks.append(TimestepSequential(down))
                skips.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(
            ResBlock(ch, emb, ch, ss), self._attention(ch, upsample=False),
            ResBlock(ch, emb, ch, ss))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, widths[level], ss)]
                ch = widths[level]
                if ds in cfg.attention_ds:
                    layers.append(self._attention(ch, upsample=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(ch, emb, ch, ss, "up") if cfg.resblock_updown
                                  else Resample(ch, up=True, use_conv=True))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                 nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1))

    def _attention(self, channels: int, upsample: bool) -> AttentionBlock:
        return AttentionBlock(channels, self.cfg.heads(channels, upsample),
                              self.cfg.use_new_attention_order)

    def fit_precision(self, device: torch.device) -> OpenAIUNet:
        """With ``use_fp16`` on CUDA, the convolutions of the encoder, middle and decoder
        in float16 (the originals' ``convert_to_fp16``; norms, the time embedding and the
        output layers stay float32); elsewhere everything stays float32."""
        if self.cfg.use_fp16 and device.type == "cuda":
            for part in (self.input_blocks, self.middle_block, self.output_blocks):
                for m in part.modules():
                    if isinstance(m, nn.Conv1d | nn.Conv2d):
                        m.half()
        return self

    def original_time(self, t: torch.Tensor) -> torch.Tensor:
        """Our t in [1, T] ``[B]`` -> the time the original network sees ``[B]``:
        index t - 1, times 1000 / T in float32 with ``rescale_timesteps``."""
        index = t - 1
        if self.cfg.rescale_timesteps:
            return index.float() * (RESCALED_STEPS / self.cfg.num_timesteps)
        return index

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.forward_original(x, self.original_time(t))

    def forward_original(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The original ``UNetModel.forward(x, timesteps)`` (0-based, maybe rescaled)."""
        emb = self.time_embed(timestep_embedding(time, self.cfg.model_channels))
        h = x.type(next(self.input_blocks.parameters()).dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
