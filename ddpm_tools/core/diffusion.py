"""Forward process, posteriors for arbitrary skips, predictions and step variances.

Notation (docs/DESIGN.md): for s < t, alpha_{t|s} = alpha_bar_t / alpha_bar_s,
beta_{t|s} = 1 - alpha_{t|s} and beta_tilde_{t|s} = beta_{t|s} (1 - alpha_bar_s) /
(1 - alpha_bar_t). Coefficient functions take integer arrays ``s``, ``t`` (any
broadcastable shape) and return float64 numpy arrays of that shape; tensor
functions broadcast a per-row coefficient ``[B]`` over ``x: [B, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.errors import BadInputError

Prediction = Literal["eps", "x0", "v"]
VarianceType = Literal["fixed_small", "fixed_large", "learned_range"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v")
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large", "learned_range")


def check_steps(schedule: NoiseSchedule, s: np.ndarray | int, t: np.ndarray | int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` as int64 arrays after checking 0 <= s < t <= T elementwise."""
    sa, ta = np.broadcast_arrays(np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64))
    bad = (sa < 0) | (sa >= ta) | (ta > schedule.T)
    if np.any(bad):
        i = np.flatnonzero(bad.ravel())[0]
        raise BadInputError(
            f"step t={ta.ravel()[i]} -> s={sa.ravel()[i]} is invalid: a step needs "
            f"0 <= s < t <= T with T = {schedule.T}"
        )
    return sa, ta


# ---------------------------------------------------------------- q(x_t | x_0)

def q_coeffs(schedule: NoiseSchedule, t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I); Ho et al. 2020, eq. (4).

    Returns ``(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))`` for t in [0, T].
    """
    ta = np.asarray(t, dtype=np.int64)
    if ta.size and (ta.min() < 0 or ta.max() > schedule.T):
        raise BadInputError(f"t must be in [0, {schedule.T}] (got {ta.min()}..{ta.max()})")
    lab = schedule.log_alpha_bar[ta]
    return np.exp(0.5 * lab), np.sqrt(-np.expm1(lab))


def bcast(coef: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row coefficient ``[B]`` as a tensor shaped ``[B, 1, ...]`` like ``like``."""
    c = torch.as_tensor(coef, dtype=like.dtype, device=like.device)
    return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: np.ndarray, noise: torch.Tensor
             ) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; Ho et al. 2020, eq. (4).

    x0, noise: ``[B, ...]``; t: ``[B]`` integers in [0, T].
    """
    a, sigma = q_coeffs(schedule, t)
    return bcast(a, x0) * x0 + bcast(sigma, x0) * noise


# ------------------------------------------------------ q(x_s | x_t, x_0), s < t

@dataclass(frozen=True)
class PosteriorCoeffs:
    """q(x_s | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde I) for s < t.

    Ho et al. 2020, eqs. (6)-(7), with the one-step quantities replaced by their
    skip analogues (Watson et al. 2021, Sec. 2; Kingma et al. 2021, App. A):
        beta_{t|s}       = 1 - alpha_bar_t / alpha_bar_s
        beta_tilde_{t|s} = beta_{t|s} (1 - alpha_bar_s) / (1 - alpha_bar_t)
        coef_x0          = sqrt(alpha_bar_s) beta_{t|s} / (1 - alpha_bar_t)
        coef_xt          = sqrt(alpha_{t|s}) (1 - alpha_bar_s) / (1 - alpha_bar_t)
    All float64 arrays of the broadcast shape of (s, t). For s = 0, beta_tilde = 0
    and the mean is x_0 itself: use the decoder instead.
    """

    beta: np.ndarray
    beta_tilde: np.ndarray
    log_beta: np.ndarray
    log_beta_tilde: np.ndarray
    coef_x0: np.ndarray
    coef_xt: np.ndarray


def posterior_coeffs(schedule: NoiseSchedule, s: np.ndarray | int, t: np.ndarray | int
                     ) -> PosteriorCoeffs:
    """Coefficients of q(x_s | x_t, x_0) for any 0 <= s < t <= T (see PosteriorCoeffs)."""
    sa, ta = check_steps(schedule, s, t)
    lab_s = schedule.log_alpha_bar[sa]
    lab_t = schedule.log_alpha_bar[ta]
    log_a_ts = lab_t - lab_s  # log alpha_{t|s}
    beta = -np.expm1(log_a_ts)
    one_m_ab_s = -np.expm1(lab_s)
    one_m_ab_t = -np.expm1(lab_t)
    beta_tilde = beta * one_m_ab_s / one_m_ab_t
    with np.errstate(divide="ignore"):
        log_beta_tilde = np.log(beta_tilde)
    return PosteriorCoeffs(
        beta=beta,
        beta_tilde=beta_tilde,
        log_beta=np.log(beta),
        log_beta_tilde=log_beta_tilde,
        coef_x0=np.exp(0.5 * lab_s) * beta / one_m_ab_t,
        coef_xt=np.exp(0.5 * log_a_ts) * one_m_ab_s / one_m_ab_t,
    )


def posterior_mean(c: PosteriorCoeffs, x0: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """mu_tilde(x_t, x_0) = coef_x0 x_0 + coef_xt x_t, per row (``c`` fields ``[B]``)."""
    return bcast(c.coef_x0, x0) * x0 + bcast(c.coef_xt, x_t) * x_t


# ------------------------------------------------------------ predictions

def x0_from_eps(schedule: NoiseSchedule, x_t: torch.Tensor, t: np.ndarray,
                eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); Ho et al. 2020, eq. (15)."""
    a, sigma = q_coeffs(schedule, t)
    return (x_t - bcast(sigma, x_t) * eps) / bcast(a, x_t)


def eps_from_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: np.ndarray,
                x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
    a, sigma = q_coeffs(schedule, t)
    return (x_t - bcast(a, x_t) * x0) / bcast(sigma, x_t)


def v_from_x0_eps(schedule: NoiseSchedule, t: np.ndarray, x0: torch.Tensor,
                  eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0; Salimans & Ho 2022, Sec. 4."""
    a, sigma = q_coeffs(schedule, t)
    return bcast(a, x0) * eps - bcast(sigma, x0) * x0


def x0_from_v(schedule: NoiseSchedule, x_t: torch.Tensor, t: np.ndarray,
              v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v; Salimans & Ho 2022, App. D."""
    a, sigma = q_coeffs(schedule, t)
    return bcast(a, x_t) * x_t - bcast(sigma, x_t) * v


def x0_from_prediction(schedule: NoiseSchedule, prediction: str, x_t: torch.Tensor,
                       t: np.ndarray, out: torch.Tensor) -> torch.Tensor:
    """x0_hat from a network output ``out`` of type ``prediction`` (eps, x0 or v)."""
    if prediction == "eps":
        return x0_from_eps(schedule, x_t, t, out)
    if prediction == "x0":
        return out
    if prediction == "v":
        return x0_from_v(schedule, x_t, t, out)
    raise BadInputError(f"unknown prediction type {prediction!r}; choose eps, x0 or v")


def target_for_prediction(schedule: NoiseSchedule, prediction: str, t: np.ndarray,
                          x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The regression target of a network trained for ``prediction``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(schedule, t, x0, eps)
    raise BadInputError(f"unknown prediction type {prediction!r}; choose eps, x0 or v")


# ------------------------------------------------------------ step variances

def decoder_log_variance_bounds(schedule: NoiseSchedule, t: np.ndarray | int
                                ) -> tuple[np.ndarray, np.ndarray]:
    """(log small, log large) decoder variance for the last step t -> 0; depends on t alone.

    The posterior q(x_0 | x_t, x_0) is a point mass (beta_tilde_{t|0} = 0), so the
    decoder needs its own variance. Our rule, chosen so that the DP stays exact (the
    decoder term depends on tau_1 alone) and so that the full chain (t = 1) uses
    improved-diffusion's values:
        large(t) = beta_{t|0} = 1 - alpha_bar_t
        small(t) = (1 - alpha_bar_t) * beta_tilde_2 / beta_1
    i.e. "small" keeps the ratio beta_tilde / beta of the first two original steps;
    at t = 1 it equals beta_tilde_2 = improved-diffusion's clipped posterior variance.
    fixed_small uses small(t), fixed_large large(t), learned_range interpolates them
    in log space with the network's v at t (Nichol & Dhariwal 2021, eq. (15)).
    At t = 1, improved-diffusion's fixed_large uses beta_tilde_2; we use beta_1.
    """
    ta = np.asarray(t, dtype=np.int64)
    if ta.size and (ta.min() < 1 or ta.max() > schedule.T):
        raise BadInputError(f"decoder step t must be in [1, {schedule.T}]")
    lab = schedule.log_alpha_bar
    log_large = np.log(-np.expm1(lab[ta]))
    # beta_tilde_2 / beta_1 = (1 - alpha_bar_1) / (1 - alpha_bar_2) * beta_2 / beta_1
    c = posterior_coeffs(schedule, 1, 2)
    log_ratio = float(c.log_beta_tilde) - np.log(schedule.betas[1])
    return log_large + log_ratio, log_large


def step_log_variance_bounds(schedule: NoiseSchedule, s: np.ndarray | int,
                             t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """(log small, log large) model variance for the step t -> s, any 0 <= s < t <= T.

    For s >= 1: (log beta_tilde_{t|s}, log beta_{t|s}), improved-diffusion's respaced
    values. For s = 0: :func:`decoder_log_variance_bounds`. float64 arrays.
    """
    sa, ta = check_steps(schedule, s, t)
    c = posterior_coeffs(schedule, sa, ta)
    dec_small, dec_large = decoder_log_variance_bounds(schedule, ta)
    small = np.where(sa >= 1, c.log_beta_tilde, dec_small)
    large = np.where(sa >= 1, c.log_beta, dec_large)
    return small, large


def model_log_variance(variance: str, log_small: torch.Tensor, log_large: torch.Tensor,
                       v: torch.Tensor | None = None) -> torch.Tensor:
    """log sigma^2 of p(x_s | x_t) by variance type (docs/DESIGN.md).

    fixed_small -> log_small; fixed_large -> log_large; learned_range ->
    v log_large + (1 - v) log_small with v = (out + 1)/2 from the network
    (Nichol & Dhariwal 2021, eq. (15)). Inputs broadcast; ``v`` only for learned_range.
    """
    if variance == "fixed_small":
        return log_small
    if variance == "fixed_large":
        return log_large
    if variance == "learned_range":
        if v is None:
            raise BadInputError("learned_range needs the network's variance output v")
        return v * log_large + (1 - v) * log_small
    raise BadInputError(
        f"unknown variance type {variance!r}; choose fixed_small, fixed_large or learned_range"
    )
