"""A small U-Net for images ``[B, C, H, W]``, after Ho et al. 2020 (App. B) and
improved-diffusion's ``UNetModel`` (Nichol & Dhariwal 2021), cut down for CPU.

Structure: a 3x3 input conv; per resolution level ``num_res_blocks`` residual blocks
(GroupNorm, SiLU, conv; the time embedding projected and added between the two convs),
self-attention at the listed feature-map sizes, a stride-2 conv down between levels;
a middle (ResBlock, attention, ResBlock); the mirror image going up, with skip
connections concatenated and nearest-neighbour upsampling + conv; GroupNorm, SiLU and
a zero-initialised 3x3 output conv. H and W must be divisible by 2^(levels - 1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ddpm_tools.errors import BadInputError
from ddpm_tools.models.embedding import TimeEmbedding, check_input

MAX_NORM_GROUPS = 8  # GroupNorm groups: the largest of 8, 4, 2, 1 that divides the channels
TIME_EMB_MULT = 4  # time-embedding width = 4 * base_channels (Ho et al. 2020, App. B)


def norm_groups(channels: int) -> int:
    """Number of GroupNorm groups for ``channels``: the largest g in (8, 4, 2, 1) dividing it."""
    g = MAX_NORM_GROUPS
    while channels % g:
        g //= 2
    return g


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    """The module with weights and bias set to zero (a residual branch that starts as 0)."""
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def check_image_size(height: int, width: int, levels: int) -> None:
    """BadInputError unless H and W are divisible by 2^(levels - 1) (one halving per level)."""
    f = 2 ** (levels - 1)
    if height % f or width % f:
        raise BadInputError(
            f"a U-Net with {levels} levels (channel_mult of length {levels}) halves the image "
            f"{levels - 1} times, so H and W must be divisible by {f}, but the images are "
            f"{height}x{width}; use a shorter channel_mult"
        )


class ResBlock(nn.Module):
    """x ``[B, c_in, h, w]``, emb ``[B, E]`` -> ``[B, c_out, h, w]``; Ho et al. 2020, App. B."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(norm_groups(c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the h*w positions, residual; ``[B, c, h, w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(3, 4)
        out = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # [B, 1, hw, c]
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv: ``[B, c, h, w]`` -> ``[B, c, h/2, w/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``[B, c, h, w]`` -> ``[B, c, 2h, 2w]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers; ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """eps/x0/v (and raw variance) network for images.

    forward(x: ``[B, C, H, W]`` float32, t: ``[B]`` int64 in [1, T]) ->
    ``[B, out_factor*C, H, W]``; with out_factor = 2 the first C channels are the
    prediction, the last C the raw variance output. Arguments as in ``UNetConfig``.
    """

    def __init__(self, data_shape: tuple[int, int, int], out_factor: int, *,
                 base_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                 attention_resolutions: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        c_img, height, width = data_shape
        check_image_size(height, width, len(channel_mult))
        self.data_shape = data_shape
        emb_dim = TIME_EMB_MULT * base_channels
        self.time = TimeEmbedding(base_channels, emb_dim)
        self.inp = nn.Conv2d(c_img, base_channels, 3, padding=1)

        def stage(c_in: int, c_out: int, size: int) -> EmbedSequential:
            layers: list[nn.Module] = [ResBlock(c_in, c_out, emb_dim, dropout)]
            if size in attention_resolutions:
                layers.append(SelfAttention(c_out))
            return EmbedSequential(*layers)

        # 1. Down: remember every output's channels for the skip connections.
        ch, size = base_channels, min(height, width)
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(stage(ch, base_channels * mult, size))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(EmbedSequential(Downsample(ch)))
                skips.append(ch)
                size //= 2
        # 2. Middle.
        self.mid = stage(ch, ch, size)
        self.mid.append(ResBlock(ch, ch, emb_dim, dropout))
        # 3. Up: one more block per level than going down, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                block = stage(ch + skips.pop(), base_channels * mult, size)
                ch = base_channels * mult
                if level != 0 and i == num_res_blocks:
                    block.append(Upsample(ch))
                    size *= 2
                self.up.append(block)
        # 4. Out.
        self.out = nn.Sequential(nn.GroupNorm(norm_groups(ch), ch), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, out_factor * c_img, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(x, t, self.data_shape)
        emb = self.time(t.to(x.device))
        h = self.inp(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
