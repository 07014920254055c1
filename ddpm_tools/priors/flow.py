"""A small normalizing flow: affine coupling layers (RealNVP; Dinh et al. 2017, Sec. 3).

x [D] -> z [D] in three parts, each invertible with a triangular Jacobian:

1. standardisation z = (x - loc) / scale with the training data's mean and standard
   deviation (fixed; log-det -sum log scale);
2. ``layers`` affine couplings, masks alternating over even and odd coordinates: with
   b the mask, y = b z + (1 - b) (z exp(s(b z)) + t(b z))  (Dinh et al. 2017, eq. (9)),
   log-det sum((1 - b) s); s is bounded, s = S tanh(raw / S) with S = ``SCALE_BOUND``;
3. the base density N(0, I).

So log p(x) = log N(z; 0, I) + sum of the log-dets, exactly (no estimate). Sampling runs
the couplings backwards: z = b y + (1 - b) (y - t(b y)) exp(-s(b y)). Everything is
float64; the conditioner networks' last layers start at zero, so an untrained flow is
the Gaussian with the data's mean and per-coordinate variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ddpm_tools.core.gaussian import LOG_2PI
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn, report

SCALE_BOUND = 3.0  # |s| <= 3: each coupling scales a coordinate by at most e^3
MIN_SCALE = 1e-6  # floor of the standardisation's per-coordinate scale


@dataclass(frozen=True)
class FlowConfig:
    """How a normalizing-flow prior is built and trained."""

    layers: int = 8  # affine coupling layers
    hidden: int = 64  # width of each conditioner MLP (two hidden layers, SiLU)
    steps: int = 2000  # Adam steps on mini-batches of the training points
    batch_size: int = 512  # points per step
    lr: float = 2e-3  # Adam learning rate (cosine-decayed to 0)

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.steps, self.batch_size) < 1 or self.lr <= 0:
            raise BadInputError("a flow needs layers, hidden, steps, batch_size >= 1 and lr > 0 "
                                f"(got {self.layers}, {self.hidden}, {self.steps}, "
                                f"{self.batch_size}, {self.lr})")


class _Coupling(nn.Module):
    """One affine coupling: coordinates where ``mask`` is 1 condition the others."""

    mask: torch.Tensor  # [D] 0/1

    def __init__(self, dims: int, hidden: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dims, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, 2 * dims)).to(torch.float64)

    def _st(self, z_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t = self.net(z_masked).chunk(2, dim=1)
        free = 1 - self.mask
        return SCALE_BOUND * torch.tanh(s_raw / SCALE_BOUND) * free, t * free

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y ``[N, D]``, log|det dy/dz| ``[N]``)."""
        s, t = self._st(z * self.mask)
        return z * torch.exp(s) + t, s.sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y * self.mask)
        return (y - t) * torch.exp(-s)


class CouplingFlow(nn.Module):
    """RealNVP-style flow on ``[N, D]`` (see the module docstring)."""

    loc: torch.Tensor  # [D] standardisation mean
    scale: torch.Tensor  # [D] standardisation standard deviation

    def __init__(self, dims: int, config: FlowConfig) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(dims, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(dims, dtype=torch.float64))
        parity = torch.arange(dims) % 2
        self.layers = [_Coupling(dims, config.hidden, (parity == i % 2).to(torch.float64))
                       for i in range(config.layers)]
        self.couplings = nn.ModuleList(self.layers)  # registers them (state_dict keys)

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z ``[N, D]``, log|det dz/dx| ``[N]``) for x ``[N, D]``."""
        z = (x.to(torch.float64) - self.loc) / self.scale
        log_det = -torch.log(self.scale).sum().expand(x.shape[0])
        for c in self.layers:
            z, ld = c(z)
            log_det = log_det + ld
        return z, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row: ``[N]`` nats, exact (change of variables)."""
        z, log_det = self.to_base(x)
        return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * LOG_2PI + log_det

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, D]`` float64 draws: z ~ N(0, I), then the couplings inverted."""
        y = torch.randn((n, self.loc.shape[0]), generator=generator, dtype=torch.float64)
        for c in reversed(self.layers):
            y = c.inverse(y)
        return y * self.scale + self.loc


@dataclass(frozen=True, eq=False)
class FlowFit:
    """A trained flow and its training curve."""

    model: CouplingFlow  # the fitted density
    history: list[float]  # mean mini-batch log-likelihood per 100 steps (nats per example)


def _init(flow: CouplingFlow, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, drawn from ``generator``; last layers 0."""
    with torch.no_grad():
        for c in flow.layers:
            linears = [m for m in c.net if isinstance(m, nn.Linear)]
            for lin in linears[:-1]:
                bound = 1 / math.sqrt(lin.in_features)
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.uniform_(-bound, bound, generator=generator)
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()


def fit_flow(x: torch.Tensor, config: FlowConfig, generator: torch.Generator,
             progress: ProgressFn | None = None) -> FlowFit:
    """Maximum-likelihood training of a flow on ``x`` ``[N, D]`` (Adam, mini-batches)."""
    x = x.to(torch.float64)
    n, d = x.shape
    if n < 2:
        raise BadInputError("a flow needs at least 2 training points")
    flow = CouplingFlow(d, config)
    flow.loc.copy_(x.mean(0))
    flow.scale.copy_(x.std(0).clamp_min(MIN_SCALE))
    _init(flow, generator)
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps)
    history: list[float] = []
    window = 0.0
    for step in range(config.steps):
        idx = torch.randint(n, (min(config.batch_size, n),), generator=generator)
        loss = -flow.log_prob(x[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            history.append(-window / ((step % 100) + 1))
            window = 0.0
            report(progress, "flow prior (steps)", step + 1, config.steps)
    flow.eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    return FlowFit(flow, history)
