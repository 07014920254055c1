"""The per-step costs of a skip step t -> s, summed over dimensions, per example.

For s >= 1 the cost of the step is KL(q(x_s | x_t, x_0) || p(x_s | x_t)) with
q = N(mu_tilde(x_t, x_0), beta_tilde_{t|s} I) and p = N(mu_tilde(x_t, x0_hat), sigma^2):
the means differ by coef_x0(s, t) (x_0 - x0_hat) (Ho et al. 2020, eqs. (6)-(8), with the
skip coefficients of Watson et al. 2021, Sec. 2), so per dimension (normal_kl)
    KL = 1/2 (log sigma^2 - log beta_tilde + beta_tilde / sigma^2 - 1
              + coef_x0^2 (x_0 - x0_hat)^2 / sigma^2).
For s = 0 the cost is the decoder -log p(x_0 | x_t) (:func:`decoder_cost`).

Shapes: n examples, D dimensions, m steps (one t, several s). All float64 torch.
"""

from __future__ import annotations

import torch

from ddpm_tools.core.gaussian import decoder_nll


def fixed_variance_kl(dims: int, log_beta_tilde: torch.Tensor, log_sigma2: torch.Tensor,
                      coef_x0_sq: torch.Tensor, err2_sum: torch.Tensor) -> torch.Tensor:
    """KL of m steps t -> s with an isotropic variance sigma^2(s, t): ``[n, m]`` nats.

    Closed form of the module docstring summed over D dimensions (Ho et al. 2020,
    eq. (8) with skip coefficients):
        D/2 (log sigma^2 - log beta_tilde + beta_tilde / sigma^2 - 1)
        + coef_x0^2 / (2 sigma^2) ||x_0 - x0_hat||^2,
    so a whole column of the cost table needs one norm per example.
    ``log_beta_tilde``, ``log_sigma2``, ``coef_x0_sq``: ``[m]``; ``err2_sum``: ``[n, 1]``,
    ||x_0 - x0_hat||^2 per example.
    """
    const = 0.5 * dims * (log_sigma2 - log_beta_tilde
                          + torch.exp(log_beta_tilde - log_sigma2) - 1.0)  # [m]
    return const[None, :] + 0.5 * (coef_x0_sq * torch.exp(-log_sigma2))[None, :] * err2_sum


def exp_sums(u: torch.Tensor, err2: torch.Tensor, delta: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_d e^{-u_d delta_j} and sum_d err2_d e^{-u_d delta_j}, each ``[n, c]``.

    ``u``, ``err2``: ``[n, D]``; ``delta``: ``[c]``. The inner kernel of
    :func:`learned_range_kl` (the one place to swap in a faster exponential sum).
    """
    e = torch.exp(u[:, :, None] * (-delta)[None, None, :])  # [n, D, c]
    return e.sum(1), torch.einsum("nd,ndc->nc", err2, e)


def learned_range_kl(u: torch.Tensor, err2: torch.Tensor, log_beta_tilde: torch.Tensor,
                     log_beta: torch.Tensor, coef_x0_sq: torch.Tensor, chunk: int
                     ) -> torch.Tensor:
    """KL of m steps t -> s with the learned-range variance: ``[n, m]`` nats.

    Per dimension log sigma_d^2 = u_d log beta + (1 - u_d) log beta_tilde (Nichol &
    Dhariwal 2021, eq. (15)) = log beta_tilde + u_d delta with delta = log beta -
    log beta_tilde, so the KL of the module docstring per dimension is
        1/2 (u_d delta + e^{-u_d delta} - 1 + coef_x0^2 err2_d e^{-log beta_tilde - u_d delta}).
    ``u`` (the network's v at t), ``err2`` = (x_0 - x0_hat)^2: ``[n, D]``; the other
    inputs ``[m]``; steps are done ``chunk`` at a time (memory n * D * chunk).
    """
    n, dims = u.shape
    delta = log_beta - log_beta_tilde  # [m]
    out = torch.empty((n, delta.shape[0]), dtype=u.dtype, device=u.device)
    u_sum = u.sum(1, keepdim=True)  # sum_d u_d delta = delta sum_d u_d
    for a in range(0, delta.shape[0], chunk):
        d = delta[a : a + chunk]  # [c]
        e_sum, err_e_sum = exp_sums(u, err2, d)
        out[:, a : a + d.shape[0]] = 0.5 * (
            u_sum * d[None, :] + e_sum - dims
            + (coef_x0_sq[a : a + chunk] * torch.exp(-log_beta_tilde[a : a + chunk]))[None, :]
            * err_e_sum)
    return out


def decoder_cost(x0: torch.Tensor, x0_hat: torch.Tensor, log_var: torch.Tensor | float,
                 levels: int | None) -> torch.Tensor:
    """-log p(x_0 | x_t) summed over dimensions: ``[n]`` nats.

    The decoder is a Gaussian with mean x0_hat and variance e^log_var, discretized over
    ``levels`` (Ho et al. 2020, eq. (13)) or a density when ``levels`` is None
    (:func:`ddpm_tools.core.gaussian.decoder_nll`). ``x0``, ``x0_hat``: ``[n, ...]``;
    ``log_var``: a float or a tensor broadcasting to them.
    """
    n = x0.shape[0]
    return decoder_nll(x0, x0_hat, log_var, levels).reshape(n, -1).sum(1)
