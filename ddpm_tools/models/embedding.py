"""Network inputs: the check of (x, t) every network does, and the time embedding.

The time embedding is the sinusoidal embedding of the integer time t and a small MLP:

Vaswani et al. 2017, Sec. 3.5 (positional encoding); used for diffusion time by
Ho et al. 2020, App. B, in improved-diffusion's ``timestep_embedding`` form
(cosines first, frequencies ``max_period^(-i/half)`` for i = 0..half-1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm_tools.errors import BadInputError

MAX_PERIOD = 10000.0  # longest wavelength of the sinusoids, in time steps (Vaswani et al. 2017)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD
                       ) -> torch.Tensor:
    """Sinusoidal embedding of integer times ``t: [B]`` -> ``[B, dim]`` float32.

    emb[:, i] = cos(t w_i), emb[:, half + i] = sin(t w_i) with w_i = max_period^(-i/half),
    half = dim // 2 (a zero column is appended when ``dim`` is odd). The time is the
    integer t in [1, T] as given (docs/DESIGN.md), not a rescaled float.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                    device=t.device) / half
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeEmbedding(nn.Module):
    """t ``[B]`` -> ``[B, out_dim]``: sinusoids of width ``sin_dim``, Linear, SiLU, Linear."""

    def __init__(self, sin_dim: int, out_dim: int) -> None:
        super().__init__()
        self.sin_dim = sin_dim
        self.mlp = nn.Sequential(nn.Linear(sin_dim, out_dim), nn.SiLU(),
                                 nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.sin_dim))


def check_input(x: torch.Tensor, t: torch.Tensor, data_shape: tuple[int, ...]) -> None:
    """Raise BadInputError unless ``x: [B, *data_shape]`` and ``t: [B]`` integer."""
    if tuple(x.shape[1:]) != data_shape or x.dim() != len(data_shape) + 1:
        raise BadInputError(
            f"the network was built for inputs [B, {', '.join(map(str, data_shape))}] but got "
            f"{list(x.shape)}; pass data of the shape the network was built for"
        )
    if t.dim() != 1 or t.shape[0] != x.shape[0] or t.is_floating_point():
        raise BadInputError(
            f"t must be an integer tensor [B] with B = {x.shape[0]} (got {t.dtype} "
            f"{list(t.shape)}); pass one integer time in [1, T] per example"
        )
