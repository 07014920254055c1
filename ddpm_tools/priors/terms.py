"""The prior term of a truncated chain, and which schedules can start where.

Starting the reverse chain at t with x_t ~ p_aux replaces the prior term
KL(q(x_T | x_0) || N(0, I)) of the negative ELBO (Ho et al. 2020, eq. (5), L_T) with

    E_{q(x_t|x_0)} [log q(x_t | x_0) - log p_aux(x_t)]
        = -D/2 (1 + log(2 pi (1 - alpha_bar_t)))  -  E_{q(x_t|x_0)} log p_aux(x_t)

(Franzese et al. 2023, Sec. 4): the first part is minus the entropy of the Gaussian
q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), in closed form; the second,
a cross-entropy, is estimated by Monte Carlo with one x_t per example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ddpm_tools.core.diffusion import q_sample
from ddpm_tools.core.gaussian import LOG_2PI
from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.core.strides import check_timesteps
from ddpm_tools.errors import BadInputError
from ddpm_tools.priors.model import AuxPrior
from ddpm_tools.priors.store import load_priors
from ddpm_tools.sets.checkpoint_set import CheckpointSet


def neg_entropy_q(schedule: NoiseSchedule, t: int, dims: int) -> float:
    """E log q(x_t | x_0) = -D/2 (1 + log(2 pi (1 - alpha_bar_t))), nats (any x_0)."""
    log_var = math.log(-math.expm1(float(schedule.log_alpha_bar[t])))
    return -0.5 * dims * (1.0 + LOG_2PI + log_var)


def aux_prior_nats(prior: AuxPrior, schedule: NoiseSchedule, x0: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """Per-example prior term of a chain starting at ``prior.t``: ``[N]`` float64 nats.

    x0, eps: ``[N, *shape]``; x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
    Returns E log q(x_t|x_0) (closed form) - log p_aux(x_t) (one draw); its mean over
    examples is an unbiased estimate of the module's formula.
    """
    t = prior.t
    x_t = q_sample(schedule, x0.to(torch.float64), np.full(x0.shape[0], t, dtype=np.int64),
                   eps.to(x0.device, torch.float64))
    return neg_entropy_q(schedule, t, prior.dims) - prior.log_prob(x_t)


def start_priors(cset: CheckpointSet, schedules: Sequence[tuple[str, np.ndarray]]
                 ) -> list[tuple[np.ndarray, AuxPrior | None]]:
    """Check each (label, timesteps) and find the prior it starts from.

    A schedule ending at T starts from N(0, I) (None); one ending at tau_K < T needs the
    set's auxiliary prior at tau_K, else one BadInputError naming the times available.
    Returns (timesteps [K+1] int64, prior or None) per schedule.
    """
    taus = [check_timesteps(ts, cset.T, truncated_ok=True) for _, ts in schedules]
    priors = load_priors(cset) if any(int(tau[-1]) != cset.T for tau in taus) else {}
    out = []
    for (label, _), tau in zip(schedules, taus, strict=True):
        start = int(tau[-1])
        if start != cset.T and start not in priors:
            avail = ", ".join(str(t) for t in [*sorted(priors), cset.T])
            raise BadInputError(
                f"schedule {label} starts at t = {start} < T = {cset.T}, but the set at "
                f"{cset.path} has no auxiliary prior there; start at one of t = {avail}, or "
                f"fit a prior with ddpm-tools train-prior --at {start}")
        out.append((tau, priors.get(start)))
    return out
