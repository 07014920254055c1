"""A time-conditioned MLP for vector data ``[B, D]`` (2-D toy sets and the like).

Images ``[B, C, H, W]`` are accepted too: they are flattened to D = C*H*W on the way
in and the output is reshaped to ``[B, out_factor*C, H, W]`` (fast on small images
such as the 8x8 digits, where a U-Net is far slower on a CPU).

Each hidden layer is ``h = SiLU(W h + P(emb))``: the time embedding ``emb`` (sinusoids
of t, then a small MLP; :mod:`ddpm_tools.models.embedding`) is projected and added to
every layer's pre-activation, as a ResBlock of Ho et al. 2020 adds it to its features.
The output layer starts at zero, so an untrained network predicts 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ddpm_tools.models.embedding import TimeEmbedding, check_input


class MLPNet(nn.Module):
    """eps/x0/v (and raw variance) network for vectors (or flattened images).

    forward(x: ``[B, *data_shape]`` float32, t: ``[B]`` int64 in [1, T]) ->
    ``[B, out_factor*D]`` for vectors, ``[B, out_factor*C, H, W]`` for images; with
    out_factor = 2 the first half is the prediction, the second the raw variance output.
    """

    def __init__(self, data_shape: tuple[int, ...], out_factor: int, hidden: int, depth: int,
                 time_dim: int) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.out_shape = (out_factor * self.data_shape[0],) + self.data_shape[1:]
        dim = 1
        for d in self.data_shape:
            dim *= d
        self.time = TimeEmbedding(time_dim, hidden)
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.time_proj = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth)
        )
        self.head = nn.Linear(hidden, out_factor * dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_input(x, t, self.data_shape)
        emb = self.time(t.to(x.device))
        h = x.reshape(x.shape[0], -1)
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = nn.functional.silu(layer(h) + proj(emb))
        return self.head(h).reshape((x.shape[0],) + self.out_shape)
