"""An auxiliary prior p_aux(x_t): a fitted density of the diffused marginal q(x_t) at one t.

Franzese et al. 2023 ("How Much is Enough?", Sec. 4) start the reverse chain at t < T
from a model of q(x_t) instead of N(0, I) at T. :class:`AuxPrior` is one such model (a
Gaussian mixture, :mod:`ddpm_tools.priors.gmm`, or a coupling flow,
:mod:`ddpm_tools.priors.flow`) together with the time t it models and how it was fitted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.priors.flow import CouplingFlow, FlowConfig
from ddpm_tools.priors.gmm import GaussianMixture, GMMConfig

PriorConfig = GMMConfig | FlowConfig
Density = GaussianMixture | CouplingFlow
KINDS: tuple[str, ...] = ("gmm", "flow")
LOG_PROB_CHUNK = 8192  # rows per log_prob call (bounds memory on large inputs)


def prior_kind(config: PriorConfig) -> str:
    """"gmm" or "flow"."""
    return "gmm" if isinstance(config, GMMConfig) else "flow"


def make_config(kind: str, *, components: int = GMMConfig.components,
                covariance: str = GMMConfig.covariance, flow_steps: int = FlowConfig.steps
                ) -> PriorConfig:
    """The configuration of a kind: ``components`` and ``covariance`` for "gmm",
    ``flow_steps`` for "flow"; everything else at its default."""
    if kind == "gmm":
        return GMMConfig(components=components, covariance=covariance)
    if kind == "flow":
        return FlowConfig(steps=flow_steps)
    raise BadInputError(f"unknown prior kind {kind!r}; choose gmm (Gaussian mixture) or flow "
                        "(normalizing flow)")


def config_from_json(kind: str, d: Any, where: str) -> PriorConfig:
    """Parse a stored configuration; CheckpointError naming ``where`` if it does not fit."""
    cls: type[GMMConfig] | type[FlowConfig]
    cls = GMMConfig if kind == "gmm" else FlowConfig
    if kind not in KINDS or not isinstance(d, dict) or set(d) - {f.name for f in fields(cls)}:
        raise CheckpointError(f"{where}: prior kind {kind!r} with config {d!r} is not one this "
                              "ddpm-tools knows; refit it with train-prior")
    try:
        return cls(**d)
    except (BadInputError, TypeError) as e:
        raise CheckpointError(f"{where}: bad prior config ({e}); refit it with train-prior"
                              ) from None


def build_density(config: PriorConfig, dims: int) -> Density:
    """An unfitted density of the configured kind on ``dims`` coordinates."""
    if isinstance(config, GMMConfig):
        return GaussianMixture(config.components, dims, config.covariance)
    return CouplingFlow(dims, config)


@dataclass(frozen=True)
class PriorInfo:
    """How a prior was fitted and how well it does (stored in ``priors.json``)."""

    data: str  # data spec whose train split was diffused
    n_train: int  # diffused points fitted on
    n_heldout: int  # held-out diffused points (train-split examples not used for fitting)
    seed: int  # seed of the split, the noise and the fit
    train_ll: float  # mean log p_aux(x_t) on the fitting points, nats per example
    heldout_ll: float  # mean log p_aux(x_t) on the held-out points, nats per example
    prior_nats: float  # E log q(x_t|x_0) - E log p_aux(x_t) on held-out examples, nats
    prior_se: float  # its standard error across the held-out examples
    seconds: float  # wall-clock time of the fit

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, where: str) -> PriorInfo:
        try:
            info = cls(**d)
        except TypeError:
            raise CheckpointError(f"{where}: the fit record {d!r} is incomplete; refit the "
                                  "prior with train-prior") from None
        bad = [f.name for f in fields(cls) if f.name not in ("data",)
               and not isinstance(getattr(info, f.name), (int, float))]
        if bad or not isinstance(info.data, str):
            raise CheckpointError(f"{where}: the fit record has bad fields {bad}; refit the "
                                  "prior with train-prior")
        return info


@dataclass(frozen=True, eq=False)
class AuxPrior:
    """p_aux(x_t) at one time t of a checkpoint set."""

    t: int  # the diffusion time modelled, 1 <= t < T
    config: PriorConfig  # kind and settings of the density
    data_shape: tuple[int, ...]  # per-example shape of x_t (the set's data shape)
    density: Density  # the fitted density on flattened x_t [N, D], float64
    info: PriorInfo  # fit record

    @property
    def kind(self) -> str:
        return prior_kind(self.config)

    @property
    def dims(self) -> int:
        return math.prod(self.data_shape)

    @property
    def prior_bpd(self) -> tuple[float, float]:
        """(prior cost, its standard error) in bits/dim: nats / (D ln 2)."""
        return (float(nats_to_bpd(self.info.prior_nats, self.dims)),
                float(nats_to_bpd(self.info.prior_se, self.dims)))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_aux(x) ``[N]`` float64 nats for x ``[N, *data_shape]``."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise BadInputError(f"the prior at t = {self.t} models x of shape {self.data_shape}, "
                                f"got {tuple(x.shape[1:])}")
        flat = x.reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
        with torch.no_grad():
            parts = [self.density.log_prob(flat[a : a + LOG_PROB_CHUNK])
                     for a in range(0, flat.shape[0], LOG_PROB_CHUNK)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, *data_shape]`` float64 draws x_t ~ p_aux."""
        with torch.no_grad():
            return self.density.sample(n, generator).reshape((n,) + self.data_shape)
