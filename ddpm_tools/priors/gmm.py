"""A Gaussian mixture density fitted by EM (Dempster et al. 1977; Bishop 2006, Sec. 9.2).

    p(x) = sum_k w_k N(x; mu_k, Sigma_k),   x: [D]

E-step: responsibilities r_nk = w_k N(x_n; mu_k, Sigma_k) / p(x_n) in log space
(log-sum-exp). M-step (Bishop 2006, eqs. (9.24)-(9.26)), with the covariances
regularised as a MAP estimate under the penalty -lambda/2 tr(Sigma_k^{-1}) per component:

    N_k = sum_n r_nk,   w_k = N_k / N,   mu_k = sum_n r_nk x_n / N_k,
    Sigma_k = (sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T + lambda I) / N_k

(diagonal covariances keep only the diagonal). Every EM step then increases the
penalised objective  mean_n log p(x_n) - lambda/(2N) sum_k tr(Sigma_k^{-1}),  which is
what :attr:`GMMFit.history` records. lambda = ``reg`` * (mean per-dimension variance of
the data) * N / K, so a component holding its share N/K of the points gets about
``reg`` times the data variance added to its diagonal (scikit-learn's ``reg_covar``,
made relative). Everything is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ddpm_tools.core.gaussian import LOG_2PI
from ddpm_tools.errors import BadInputError

COVARIANCES: tuple[str, ...] = ("full", "diag")
MIN_COUNT = 1e-10  # floor of N_k, so an emptied component stays finite


@dataclass(frozen=True)
class GMMConfig:
    """How a Gaussian mixture prior is fitted."""

    components: int = 8  # K, mixture components
    covariance: str = "full"  # "full" or "diag" covariance matrices
    max_iters: int = 300  # most EM iterations
    tol: float = 1e-7  # stop when the objective gains less than this (nats per example)
    reg: float = 1e-4  # covariance regulariser, relative to the data variance (see module)

    def __post_init__(self) -> None:
        if int(self.components) != self.components or self.components < 1:
            raise BadInputError(f"--components must be an integer >= 1 (got {self.components})")
        if self.covariance not in COVARIANCES:
            raise BadInputError(f"unknown covariance {self.covariance!r}; choose full or diag")
        if self.max_iters < 1 or self.tol < 0 or self.reg <= 0:
            raise BadInputError("a GMM needs max_iters >= 1, tol >= 0 and reg > 0 (got "
                                f"{self.max_iters}, {self.tol}, {self.reg})")


class GaussianMixture(nn.Module):
    """A mixture of K Gaussians in D dimensions (parameters as float64 buffers).

    ``log_weights``: [K]; ``means``: [K, D]; ``scale_tril``: [K, D, D] lower-triangular
    Cholesky factors of Sigma_k (full), or [K, D] standard deviations (diag).
    """

    log_weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor

    def __init__(self, components: int, dims: int, covariance: str) -> None:
        super().__init__()
        self.covariance = covariance
        scale = torch.eye(dims).repeat(components, 1, 1) if covariance == "full" \
            else torch.ones(components, dims)
        self.register_buffer("log_weights", torch.full((components,), -math.log(components),
                                                       dtype=torch.float64))
        self.register_buffer("means", torch.zeros(components, dims, dtype=torch.float64))
        self.register_buffer("scale_tril", scale.to(torch.float64))

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x_n; mu_k, Sigma_k): ``[N, K]`` for x ``[N, D]``."""
        cols = []
        for k in range(self.means.shape[0]):  # one component at a time: memory O(N D)
            diff = x - self.means[k]  # [N, D]
            if self.covariance == "full":
                L = self.scale_tril[k]  # [D, D]
                z = torch.linalg.solve_triangular(L, diff.T, upper=False).T
                log_det = torch.log(torch.diagonal(L)).sum()
            else:
                z = diff / self.scale_tril[k]
                log_det = torch.log(self.scale_tril[k]).sum()
            cols.append(-0.5 * (z**2).sum(1) - log_det)
        return self.log_weights[None] + torch.stack(cols, 1) - 0.5 * x.shape[1] * LOG_2PI

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row: ``[N]`` nats for x ``[N, D]`` (log-sum-exp over components)."""
        return torch.logsumexp(self.component_log_prob(x.to(torch.float64)), dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, D]`` float64 draws: a component k ~ w, then mu_k + L_k z."""
        k = torch.multinomial(torch.exp(self.log_weights), n, replacement=True,
                              generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        if self.covariance == "full":
            return self.means[k] + (self.scale_tril[k] @ z[..., None])[..., 0]
        return self.means[k] + self.scale_tril[k] * z


@dataclass(frozen=True, eq=False)
class GMMFit:
    """A fitted mixture and how EM went."""

    model: GaussianMixture  # the fitted density
    history: list[float]  # penalised objective at the start and after each EM step (nats/ex.)
    converged: bool  # stopped because the gain fell below tol (else max_iters was hit)


def fit_gmm(x: torch.Tensor, config: GMMConfig, generator: torch.Generator) -> GMMFit:
    """Fit a mixture to ``x`` ``[N, D]`` by EM (see the module docstring).

    Initialisation (seeded by ``generator``): k-means++ seeding of the means (Arthur &
    Vassilvitskii 2007), the data covariance (regularised) for every component, equal
    weights.
    """
    x = x.to(torch.float64)
    n, d = x.shape
    K = config.components
    if n < K + 1:
        raise BadInputError(f"a {K}-component mixture needs more than {K} training points "
                            f"(got {n}); use fewer --components or more samples")
    var = x.var(0, unbiased=False)  # [D]
    lam = config.reg * float(var.mean().clamp_min(1e-12)) * n / K
    gmm = GaussianMixture(K, d, config.covariance)
    gmm.means.copy_(_kmeans_pp(x, K, generator))
    cov0 = torch.cov(x.T).reshape(d, d) + lam * K / n * torch.eye(d, dtype=torch.float64)
    if config.covariance == "full":
        gmm.scale_tril.copy_(torch.linalg.cholesky(cov0).expand(K, d, d))
    else:
        gmm.scale_tril.copy_(torch.sqrt(torch.diagonal(cov0)).expand(K, d))
    history = [_objective(gmm, x, lam)]
    for _ in range(config.max_iters):
        log_r = gmm.component_log_prob(x)  # E-step
        log_r = log_r - torch.logsumexp(log_r, dim=1, keepdim=True)
        _m_step(gmm, x, torch.exp(log_r), lam)  # M-step
        history.append(_objective(gmm, x, lam))
        if history[-1] - history[-2] < config.tol:
            return GMMFit(gmm, history, True)
    return GMMFit(gmm, history, False)


def _kmeans_pp(x: torch.Tensor, K: int, generator: torch.Generator) -> torch.Tensor:
    """K rows of ``x`` ``[N, D]``: the first uniformly, each next with probability
    proportional to its squared distance to the nearest one chosen (k-means++)."""
    idx = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, K):
        w = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        idx.append(int(torch.multinomial(w, 1, generator=generator)))
        d2 = torch.minimum(d2, ((x - x[idx[-1]]) ** 2).sum(1))
    return x[idx]


def _m_step(gmm: GaussianMixture, x: torch.Tensor, r: torch.Tensor, lam: float) -> None:
    """Bishop 2006, eqs. (9.24)-(9.26) with Sigma_k = (S_k + lambda I) / N_k (MAP)."""
    d = x.shape[1]
    nk = r.sum(0).clamp_min(MIN_COUNT)  # [K]
    gmm.log_weights.copy_(torch.log(nk / nk.sum()))
    mu = (r.T @ x) / nk[:, None]  # [K, D]
    gmm.means.copy_(mu)
    for k in range(mu.shape[0]):
        diff = x - mu[k]  # [N, D]
        if gmm.covariance == "full":
            cov = (diff.T @ (r[:, k, None] * diff) + lam * torch.eye(d, dtype=x.dtype)) / nk[k]
            gmm.scale_tril[k] = torch.linalg.cholesky(0.5 * (cov + cov.T))
        else:
            gmm.scale_tril[k] = torch.sqrt(((r[:, k, None] * diff**2).sum(0) + lam) / nk[k])

def _objective(gmm: GaussianMixture, x: torch.Tensor, lam: float) -> float:
    """mean_n log p(x_n) - lambda/(2N) sum_k tr(Sigma_k^{-1}), nats per example."""
    ll = float(gmm.log_prob(x).mean())
    if gmm.covariance == "full":
        inv_l = torch.linalg.inv(gmm.scale_tril)  # tr(Sigma^-1) = ||L^-1||_F^2
        tr = float((inv_l**2).sum())
    else:
        tr = float((gmm.scale_tril ** -2).sum())
    return ll - 0.5 * lam * tr / x.shape[0]


def gmm_from_numpy(means: np.ndarray, scales: np.ndarray, weights: np.ndarray,
                   covariance: str) -> GaussianMixture:
    """A mixture with given parameters (means [K, D]; scales [K, D, D] lower Cholesky
    factors or [K, D] standard deviations; weights [K] summing to 1)."""
    K, d = means.shape
    gmm = GaussianMixture(K, d, covariance)
    gmm.means.copy_(torch.as_tensor(means, dtype=torch.float64))
    gmm.scale_tril.copy_(torch.as_tensor(scales, dtype=torch.float64))
    gmm.log_weights.copy_(torch.log(torch.as_tensor(weights, dtype=torch.float64)))
    return gmm
