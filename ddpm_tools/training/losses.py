"""Training losses of a DDPM network, per example and unreduced (shape ``[B]``).

L_simple (Ho et al. 2020, eq. (14)): the mean-squared error of the network's
prediction (eps, x0 or v) against its target, averaged over data dimensions.

L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, eq. (16), lambda = 0.001)
for learned_range variances. L_vlb = L_0 + ... + L_{T-1} + L_T (Ho et al. 2020,
eq. (5)); with t drawn uniformly from 1..T, ``T * L_{t-1}`` is its one-sample
estimate, where L_{t-1} is the one-step term at t (:func:`vlb_term`). The mean of
p(x_{t-1} | x_t) is built from the *detached* prediction, so L_vlb trains only the
variance output (Nichol & Dhariwal 2021, Sec. 3.1: "we apply a stop-gradient to the
mu_theta output for the L_vlb term").

Scale, stated exactly: :func:`vlb_term` is in nats per data dimension (the sum over
dimensions divided by D, improved-diffusion's ``mean_flat``), and
:func:`diffusion_loss` adds ``vlb_weight * T * vlb_term``. At T = 1000 and
vlb_weight = 0.001 that is 1 x the one-step term, which is improved-diffusion's
hybrid loss (``mse + vb``, ``vb`` rescaled by T/1000 under RESCALED_MSE) except that
improved-diffusion's ``vb`` is in bits, so there it is 1/ln 2 = 1.44 times ours.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm_tools.core.diffusion import (
    PREDICTIONS,
    VARIANCE_TYPES,
    bcast,
    model_log_variance,
    posterior_coeffs,
    posterior_mean,
    step_log_variance_bounds,
    target_for_prediction,
    x0_from_prediction,
)
from ddpm_tools.core.gaussian import decoder_nll, normal_kl
from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.errors import BadInputError
from ddpm_tools.models import split_output


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B]``: the mean over all but the first dimension."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _check_levels(levels: int | None) -> None:
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int)
                               or levels < 2):
        raise BadInputError(f"levels must be None (continuous data) or an integer >= 2 "
                            f"(got {levels!r})")


def _check_batch(schedule: NoiseSchedule, t: np.ndarray, **tensors: torch.Tensor
                 ) -> np.ndarray:
    """The named tensors share one shape [B, ...] and t is [B] in [1, T]; returns t."""
    shapes = [list(x.shape) for x in tensors.values()]
    first = next(iter(tensors.values()))
    if first.dim() < 2 or any(sh != shapes[0] for sh in shapes):
        raise BadInputError(f"{', '.join(tensors)} must share one shape [B, ...] (got "
                            f"{', '.join(map(str, shapes))})")
    t = schedule.check_t(t)
    if t.shape != (first.shape[0],):
        raise BadInputError(f"t must have shape [B] = [{first.shape[0]}] (got {list(t.shape)})")
    return t


def vlb_term(schedule: NoiseSchedule, pred: torch.Tensor, raw_var: torch.Tensor,
             x0: torch.Tensor, x_t: torch.Tensor, t: np.ndarray, prediction: str,
             levels: int | None) -> torch.Tensor:
    """One-step variational term L_{t-1} per example, nats per dimension, mean detached.

    pred, raw_var, x0, x_t: ``[B, C, ...]`` (or ``[B, D]``); t: ``[B]`` int64 in [1, T].
    x0_hat = x0_from_prediction(pred.detach()), clipped to [-1, 1] when ``levels`` is
    given; log sigma^2 = v log_large + (1 - v) log_small with v = (raw_var + 1)/2 and the
    bounds of :func:`step_log_variance_bounds` (t-1, t) (Nichol & Dhariwal 2021, eq. (15)).
        t >= 2: KL(q(x_{t-1} | x_t, x_0) || N(mu_tilde(x_t, x0_hat), sigma^2)), Ho et al.
                2020, eq. (5) L_{t-1}, closed form (:func:`normal_kl`);
        t == 1: decoder -log p(x_0 | x_1) with mean x0_hat (:func:`decoder_nll`;
                discretized over ``levels``, a density if None), Ho et al. 2020, L_0.
    Each is summed over dimensions and divided by D. Gradients reach ``raw_var`` only.
    """
    _check_levels(levels)
    t = _check_batch(schedule, t, pred=pred, raw_var=raw_var, x0=x0, x_t=x_t)
    x0_hat = x0_from_prediction(schedule, prediction, x_t, t, pred.detach())
    if levels is not None:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    v = (raw_var + 1.0) / 2.0
    log_small, log_large = step_log_variance_bounds(schedule, t - 1, t)
    log_var = model_log_variance("learned_range", bcast(log_small, v), bcast(log_large, v), v)
    terms = x0.new_zeros(x0.shape[0])
    kl_rows = np.flatnonzero(t >= 2)
    dec_rows = np.flatnonzero(t == 1)
    if kl_rows.size:
        i = torch.as_tensor(kl_rows, device=x0.device)
        tk = t[kl_rows]
        c = posterior_coeffs(schedule, tk - 1, tk)
        true_mean = posterior_mean(c, x0[i], x_t[i])
        model_mean = posterior_mean(c, x0_hat[i], x_t[i])
        kl = normal_kl(true_mean, bcast(c.log_beta_tilde, true_mean), model_mean, log_var[i])
        terms = terms.index_put((i,), _mean_flat(kl))
    if dec_rows.size:
        j = torch.as_tensor(dec_rows, device=x0.device)
        nll = decoder_nll(x0[j], x0_hat[j], log_var[j], levels)
        terms = terms.index_put((j,), _mean_flat(nll))
    return terms


def diffusion_loss(schedule: NoiseSchedule, out: torch.Tensor, x0: torch.Tensor,
                   x_t: torch.Tensor, t: np.ndarray, noise: torch.Tensor, prediction: str,
                   variance: str, levels: int | None, vlb_weight: float = 0.001
                   ) -> torch.Tensor:
    """Per-example training loss ``[B]``: L_simple, plus vlb_weight * T * L_{t-1} for
    learned_range (module docstring; Ho et al. 2020, eq. (14); Nichol & Dhariwal 2021,
    eq. (16)).

    out: ``[B, F*C, ...]`` network output at (x_t, t), F = 2 for learned_range (first
    half the prediction, second half the raw variance), else 1. x0, x_t, noise:
    ``[B, C, ...]`` with x_t = q_sample(schedule, x0, t, noise). t: ``[B]`` int64 in
    [1, T]. prediction: "eps" | "x0" | "v"; variance: "fixed_small" | "fixed_large" |
    "learned_range"; levels: the data's levels (None for continuous data), used by the
    decoder term and to clip x0_hat; vlb_weight: lambda of L_hybrid (>= 0).
    Fixed variances train on L_simple alone (Ho et al. 2020, Sec. 3.4).
    """
    if prediction not in PREDICTIONS:
        raise BadInputError(f"unknown prediction type {prediction!r}; choose eps, x0 or v")
    if variance not in VARIANCE_TYPES:
        raise BadInputError(f"unknown variance type {variance!r}; choose "
                            "fixed_small, fixed_large or learned_range")
    _check_levels(levels)
    if not vlb_weight >= 0.0:
        raise BadInputError(f"vlb_weight must be >= 0 (got {vlb_weight!r})")
    t = _check_batch(schedule, t, x0=x0, x_t=x_t, noise=noise)
    if out.shape[0] != x0.shape[0] or out.shape[2:] != x0.shape[2:]:
        raise BadInputError(f"the network output {list(out.shape)} does not match the data "
                            f"{list(x0.shape)} outside the channel dimension")
    pred, raw_var = split_output(out, x0.shape[1], variance)
    target = target_for_prediction(schedule, prediction, t, x0, noise)
    loss = _mean_flat((pred - target) ** 2)
    if raw_var is not None:
        vlb = vlb_term(schedule, pred, raw_var, x0, x_t, t, prediction, levels)
        loss = loss + (vlb_weight * schedule.T) * vlb
    return loss
