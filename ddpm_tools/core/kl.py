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

from ddpm_tools.core.expsum import Method, exp_sums, learned_range_sums
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


TAYLOR_Y_MAX = 4.0  # phi sums by moments where max_d u_d delta <= this (else e_sum - D + ...)
TAYLOR_TERMS = 48  # terms of the series of phi(y); truncation <= 4^49 / 49! < 1e-30 relative
CHUNK_ELEMENTS = 1 << 22  # float64 elements per temporary of the direct phi sums


def phi_sums(u: torch.Tensor, delta: torch.Tensor, method: Method = "auto",
             e_sum: torch.Tensor | None = None) -> torch.Tensor:
    """sum_d phi(u_d delta_j) with phi(y) = e^{-y} - 1 + y >= 0: ``[n, m]``.

    The part of the learned-range KL that is a difference of nearly equal numbers when
    u delta is small (phi(y) ~ y^2 / 2): it is never formed as e_sum - D + u_sum delta.
    ``direct``: term by term with ``expm1`` (relative error ~ eps / y per term).
    Otherwise, where max_d u_d delta_j <= ``TAYLOR_Y_MAX`` for an example, the series
    phi(y) = sum_{k>=2} (-y)^k / k! over the per-example power sums M_k = sum_d u_d^k
    (O(n D K) once, then O(n m K)); its terms shrink after k ~ y, so the rounding stays a
    few eps of the largest term (<= e^4 times the result). The other entries (u delta
    large, phi of order one per dimension) use the Chebyshev moments of
    :func:`ddpm_tools.core.expsum.exp_sums`: u_sum delta + e_sum - D.
    ``u``: [n, D] (v in [0, 1]); ``delta``: [m] >= 0; ``e_sum``: [n, m], sum_d e^{-u_d
    delta_j} when the caller has it already (it is then not computed again).
    """
    n, dims = u.shape
    m = delta.shape[0]
    out = torch.empty((n, m), dtype=u.dtype, device=u.device)
    if method == "direct":
        step = max(1, CHUNK_ELEMENTS // max(1, n * dims))
        for a in range(0, m, step):
            y = u[:, :, None] * delta[None, None, a : a + step]
            out[:, a : a + step] = (torch.expm1(-y) + y).sum(1)
        return out
    k = torch.arange(2, TAYLOR_TERMS + 1, dtype=u.dtype, device=u.device)  # [K]
    power = u * u
    rows = torch.empty((k.shape[0], n), dtype=u.dtype, device=u.device)
    for j in range(k.shape[0]):  # M_k = sum_d u_d^k, k = 2..TAYLOR_TERMS, in place
        torch.sum(power, 1, out=rows[j])
        power.mul_(u)
    moments = rows.T  # [n, K]
    sign = torch.where(k % 2 == 0, 1.0, -1.0).to(u.dtype)
    coef = sign[:, None] * torch.exp(k[:, None] * torch.log(delta)[None, :]
                                     - torch.lgamma(k + 1)[:, None])  # (-delta)^k / k!
    out = moments @ torch.where(delta[None, :] > 0, coef, torch.zeros_like(coef))
    taylor = u.abs().amax(1)[:, None] * delta[None, :] <= TAYLOR_Y_MAX  # [n, m]
    far = ~taylor.all(0)  # columns where some example needs the exponential sums
    if bool(far.any()):
        d = delta[far]
        e_far = exp_sums(torch.ones_like(u), u, d, method=method) if e_sum is None \
            else e_sum[:, far]
        out[:, far] = torch.where(taylor[:, far], out[:, far],
                                  u.sum(1, keepdim=True) * d[None, :] + e_far - dims)
    return out


def learned_range_kl(u: torch.Tensor, err2: torch.Tensor, log_beta_tilde: torch.Tensor,
                     log_beta: torch.Tensor, coef_x0_sq: torch.Tensor,
                     method: Method = "auto") -> torch.Tensor:
    """KL of m steps t -> s with the learned-range variance: ``[n, m]`` nats.

    Per dimension log sigma_d^2 = u_d log beta + (1 - u_d) log beta_tilde (Nichol &
    Dhariwal 2021, eq. (15)) = log beta_tilde + u_d delta with delta = log beta -
    log beta_tilde, so the KL of the module docstring per dimension is
        1/2 (phi(u_d delta) + coef_x0^2 err2_d e^{-log beta_tilde - u_d delta}),
    phi(y) = e^{-y} - 1 + y. ``u`` (the network's v at t), ``err2`` = (x_0 - x0_hat)^2:
    ``[n, D]``; the other inputs ``[m]``. The sums over d come from per-example moments,
    O(n (D + m) p) instead of n D m exponentials: :func:`phi_sums` and
    :func:`ddpm_tools.core.expsum.exp_sums` (Chebyshev moments, 1e-13 relative per sum);
    ``method="direct"`` sums term by term (the reference).
    """
    delta = log_beta - log_beta_tilde  # [m], >= 0 since beta_tilde <= beta
    e_sum, err_e_sum = learned_range_sums(u, err2, delta, method=method)  # one set of moments
    return 0.5 * (phi_sums(u, delta, method, e_sum)
                  + (coef_x0_sq * torch.exp(-log_beta_tilde))[None, :] * err_e_sum)


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
