"""Drawing samples along a schedule: ancestral (eta = 1) or DDIM (eta < 1).

eta = 1 samples exactly the model the DP scores: x_{tau_K} ~ N(0, I), then for each
step t -> s with s >= 1, x_s ~ p(x_s | x_t) = N(mu_tilde(x_t, x0_hat), sigma^2) with the
set's variance type (docs/DESIGN.md) or the one asked for (``variance``: fixed, analytic,
mse; :mod:`ddpm_tools.core.variances`); the last step t -> 0 returns the decoder's mean x0_hat.
eta < 1 is DDIM (Song et al. 2021, eq. (12)): sigma^2 = eta^2 beta_tilde_{t|s} and
x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_hat + sigma z;
eta = 0 is deterministic.

A schedule starting at tau_K < T (a truncated chain, Franzese et al. 2023) draws
x_{tau_K} ~ p_aux from the set's auxiliary prior at tau_K instead of N(0, I).
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm_tools.core.diffusion import (
    eps_from_x0,
    model_log_variance,
    posterior_coeffs,
    step_log_variance_bounds,
)
from ddpm_tools.core.variances import STAT_VARIANCES, StepVariance
from ddpm_tools.errors import BadInputError
from ddpm_tools.priors.terms import start_priors
from ddpm_tools.progress import ProgressFn, report
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.denoiser import Denoiser


def sample(cset: CheckpointSet, timesteps: np.ndarray, n: int, eta: float = 1.0,
           generator: torch.Generator | None = None, batch_size: int = 512,
           device: torch.device | str = "cpu", progress: ProgressFn | None = None,
           x_T: torch.Tensor | None = None, variance: StepVariance | None = None
           ) -> torch.Tensor:
    """``n`` samples ``[n, *shape]`` float64 (data scale: [-1, 1] for images).

    ``timesteps``: 0 = tau_0 < ... < tau_K = T (or tau_K < T where the set has an
    auxiliary prior); K network calls per sample.
    ``x_T``: optional starting point x_{tau_K} ``[n, *shape]`` (else drawn from
    ``generator``: N(0, I) at T, p_aux below T). ``variance``: the reverse variance of the
    ancestral steps (None: the set's own; eta = 1 only).
    """
    if not 0.0 <= eta <= 1.0:
        raise BadInputError(f"--eta must be in [0, 1] (got {eta}); 1 = ancestral, 0 = DDIM")
    if n < 1:
        raise BadInputError("--n must be at least 1")
    if variance is not None and variance.kind != cset.manifest.variance and eta != 1.0:
        raise BadInputError(f"--variance {variance.kind} applies to ancestral sampling; use "
                            "--eta 1 or drop --variance")
    ((tau, aux),) = start_priors(cset, [("to sample", np.asarray(timesteps))])
    shape = (n,) + tuple(cset.manifest.data.shape)
    if x_T is None and aux is not None:
        x_T = aux.sample(n, generator)
    elif x_T is None:
        x_T = torch.randn(shape, generator=generator, dtype=torch.float64)
    elif tuple(x_T.shape) != shape:
        raise BadInputError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
    den = Denoiser(cset, device=device)
    out = []
    for a in range(0, n, batch_size):
        x = x_T[a : a + batch_size].to(device)
        noises = [torch.randn(x.shape, generator=generator, dtype=torch.float64)
                  for _ in range(len(tau) - 2)]
        out.append(_chain(cset, den, tau, x, eta, noises, variance))
        report(progress, "sampling (examples)", min(a + batch_size, n), n)
    return torch.cat(out).cpu()


def _chain(cset: CheckpointSet, den: Denoiser, tau: np.ndarray, x: torch.Tensor, eta: float,
           noises: list[torch.Tensor], variance: StepVariance | None = None) -> torch.Tensor:
    """Run one batch from tau_K down to 0; ``noises`` feeds the K - 1 stochastic steps."""
    man = cset.manifest
    sch = man.schedule
    b = x.shape[0]
    for i in range(len(tau) - 1, 0, -1):
        t, s = int(tau[i]), int(tau[i - 1])
        tb = np.full(b, t, dtype=np.int64)
        pred = den(x, tb)
        if s == 0:
            return pred.x0_hat  # the decoder's mean
        z = noises[i - 2].to(x.device)
        if eta == 1.0:
            c = posterior_coeffs(sch, s, t)
            mean = float(c.coef_x0) * pred.x0_hat + float(c.coef_xt) * x  # mu_tilde
            kind = man.variance if variance is None else variance.kind
            if kind in STAT_VARIANCES:
                assert variance is not None
                lv = torch.tensor(float(variance.log_sigma2(sch, np.array([s]), t)[0]))
            else:
                small, large = step_log_variance_bounds(sch, s, t)
                lv = model_log_variance(kind, torch.tensor(float(small)),
                                        torch.tensor(float(large)), pred.v)
            x = mean + torch.exp(0.5 * lv).to(x) * z
        else:
            c = posterior_coeffs(sch, s, t)
            sigma2 = eta**2 * float(c.beta_tilde)
            ab_s = float(sch.alpha_bar[s])
            eps_hat = eps_from_x0(sch, x, tb, pred.x0_hat)
            x = (ab_s**0.5 * pred.x0_hat
                 + max(1.0 - ab_s - sigma2, 0.0) ** 0.5 * eps_hat + sigma2**0.5 * z)
    return x


def to_levels(x: torch.Tensor, levels: int) -> np.ndarray:
    """Samples in [-1, 1] -> uint8 level indices k = round((x + 1)/2 (L - 1)), clipped."""
    k = torch.round((x.clamp(-1, 1) + 1) / 2 * (levels - 1))
    return k.to(torch.uint8).numpy()

