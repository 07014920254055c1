"""Gaussian KL, discretized and continuous Gaussian likelihoods, the prior term, units.

All functions are elementwise and unreduced (the caller sums over dimensions and
averages over examples), in nats, on torch tensors of any float dtype and device.
"""

from __future__ import annotations

import math

import torch

from ddpm_tools.errors import BadInputError

LOG_2PI = math.log(2 * math.pi)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor | float,
              mean2: torch.Tensor, logvar2: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats.

    0.5 (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1);
    the closed form used by Ho et al. 2020, eq. (5) and improved-diffusion ``normal_kl``.
    """
    ref = next(x for x in (mean1, mean2) if isinstance(x, torch.Tensor))
    lv1 = torch.as_tensor(logvar1, dtype=ref.dtype, device=ref.device)
    lv2 = torch.as_tensor(logvar2, dtype=ref.dtype, device=ref.device)
    return 0.5 * (lv2 - lv1 + torch.exp(lv1 - lv2)
                  + (mean1 - mean2) ** 2 * torch.exp(-lv2) - 1.0)


def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails; a may be -inf, b +inf.

    Reflects into the lower tail (Phi(b) - Phi(a) = Phi(-a) - Phi(-b)) where a > 0 or
    b = +inf, then log Phi(b') + log(-expm1(log Phi(a') - log Phi(b'))). Where the lower
    end is -inf after the reflection the second term is log 1 = 0 exactly, so an open
    bin costs one log Phi, the same number as log_ndtr of its finite end.
    """
    flip = (a > 0) | (b == math.inf)
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    tiny = torch.finfo(a.dtype).tiny
    return log_hi + torch.log(torch.clamp(-torch.expm1(log_lo - log_hi), min=tiny))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x) of a Gaussian discretized to ``levels`` equally spaced values in [-1, 1].

    Bin k (value x_k = 2k/(L-1) - 1) spans x_k +- 1/(L-1); the first bin is open to
    -inf and the last to +inf, so the probabilities of all L levels sum to 1 (Ho et
    al. 2020, eq. (13); improved-diffusion ``discretized_gaussian_log_likelihood``,
    there with L = 256 and a tanh approximation of the CDF; here the exact CDF).
    ``x`` must lie on the levels. ``log_scale`` is log sigma (half the log variance).
    Two ``log_ndtr`` per element: the open ends are -inf / +inf in :func:`_log_ndtr_diff`.
    """
    if levels < 2:
        raise BadInputError(f"a discretized likelihood needs at least 2 levels (got {levels})")
    half_bin = 1.0 / (levels - 1)
    inv_std = torch.exp(-log_scale)
    edge_eps = 0.5 * half_bin
    upper = torch.where(x > 1 - edge_eps, math.inf, (x - mean + half_bin) * inv_std)
    lower = torch.where(x < -1 + edge_eps, -math.inf, (x - mean - half_bin) * inv_std)
    return _log_ndtr_diff(lower, upper)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor,
                         log_var: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, e^log_var) per element, in nats (continuous data)."""
    lv = torch.as_tensor(log_var, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + lv + (x - mean) ** 2 * torch.exp(-lv))


def decoder_nll(x0: torch.Tensor, x0_hat: torch.Tensor, log_var: torch.Tensor | float,
                levels: int | None) -> torch.Tensor:
    """-log p(x_0 | x_t) per element: discretized over ``levels``, or a density if None.

    The decoder's mean is x0_hat and its variance e^log_var (docs/DESIGN.md, "Decoder").
    """
    lv = torch.as_tensor(log_var, dtype=x0.dtype, device=x0.device)
    if levels is None:
        return -gaussian_log_density(x0, x0_hat, lv)
    return -discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * lv, levels)


def prior_kl(x0: torch.Tensor, log_alpha_bar_T: float) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) per element, in nats; Ho et al. 2020, eq. (5), L_T."""
    sqrt_ab = math.exp(0.5 * log_alpha_bar_T)
    log_var = math.log(-math.expm1(log_alpha_bar_T))
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    return normal_kl(sqrt_ab * x0, log_var, zero.expand_as(x0), 0.0)


def nats_to_bpd(nats: float | torch.Tensor, dims: int) -> float | torch.Tensor:
    """Nats per example -> bits per dimension: nats / (D ln 2)."""
    return nats / (dims * math.log(2.0))
