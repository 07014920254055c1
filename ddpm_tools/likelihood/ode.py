"""Exact log-likelihood of a set by the probability-flow ODE (Song et al. 2021, Sec. 4.3).

Continuous time. Let tau = T u be the diffusion time in units of steps, tau in [1, T],
and lambda(tau) = -log alpha_bar(tau) the piecewise-linear interpolation of the set's
-log alpha_bar_t at the integers. Then q(x_tau | x_0) = N(sqrt(alpha_bar) x_0,
(1 - alpha_bar) I) agrees with the discrete chain at every integer t, and the VP SDE
(Song et al. 2021, eq. (11)) has the piecewise-constant rate
b(tau) = d lambda / d tau = -log(1 - beta_t) on (t - 1, t].

Probability flow (Song et al. 2021, eq. (13), VP case), with the score
grad log p(x) = -eps_hat(x, tau) / sigma, sigma = sqrt(1 - alpha_bar):

    dx/dtau = -1/2 b(tau) (x - eps_hat(x, tau) / sigma).

We integrate in lambda instead of tau (a change of the time variable, which leaves the
flow's paths and its likelihood unchanged):

    dx/dlambda = f(x, lambda) = -1/2 (x - eps_hat(x, tau(lambda)) / sigma(lambda)),
    sigma(lambda) = sqrt(1 - exp(-lambda)),

whose coefficient is constant, so the jumps of b between steps (the cosine schedule's
last one, beta_T = 0.999, gives b = 6.9 per step) cause no discontinuity and no
stiffness. eps_hat at a non-integer tau is the linear interpolation of the network's
(unclipped) eps prediction at floor(tau) and ceil(tau) (x0- and v-predictions are
converted to eps; a learned variance is not used): the network is called through the
set's Denoiser members at integer t only.

Log-likelihood (Song et al. 2021, App. D.2, eq. (39)):

    log p_1(x(lambda_1)) = log N(x(lambda_T); 0, I) + int div f(x, lambda) dlambda,

solved from x = x_0 at tau = 1 (the data; tau = 1 is the least noise the network knows,
as Song et al. start at a small epsilon > 0 rather than 0) to tau = T with fixed-step
RK4: ``steps`` steps of equal size in

    g(tau) = (tau - 1)/(T - 1) + (lambda(tau) - lambda_1) / (lambda_T - lambda_1),

normalised time plus normalised noise decay, so that no step spans more than
2 (T - 1)/steps units of tau nor more than 2/steps of the total decay. div f is exact
(one backward pass per dimension) for D <= 16, else Hutchinson's estimator
E[z^T (df/dx) z] with ``probes`` Rademacher vectors z per example, drawn once per solve
(Grathwohl et al. 2019, FFJORD).

Discrete data (levels L, bin width Delta = 2/(L - 1) on [-1, 1]): uniform
dequantization y = x + Delta (U - 1/2), U ~ U[0, 1)^D, and
-log P(x) <= -log p(y) - D log Delta (Jensen), the bits/dim convention of Song et al.
2021 (Table 2) and Ho et al. 2020 for images rescaled to [0, 256). Continuous data:
-log p(x_0), a density. Bits/dim = nats / (D ln 2).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import eps_from_x0, x0_from_prediction
from ddpm_tools.core.gaussian import LOG_2PI, nats_to_bpd
from ddpm_tools.core.stats import mean_and_se
from ddpm_tools.costs.estimate import select_examples
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError
from ddpm_tools.models import split_output
from ddpm_tools.progress import ProgressFn, report
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.denoiser import Denoiser

EXACT_DIV_MAX_DIMS = 16  # exact divergence up to this many dimensions, else Hutchinson
KNOT_TOL = 1e-9  # a tau this close to an integer is that integer


@dataclass(frozen=True)
class ODESettings:
    """How the probability-flow ODE is solved."""

    steps: int = 100  # fixed RK4 steps from tau = 1 to T (4 drift evaluations each)
    probes: int = 1  # Hutchinson probes per example, used when D > exact_max_dims
    exact_max_dims: int = EXACT_DIV_MAX_DIMS  # exact divergence for D <= this
    batch_size: int = 256  # examples solved together

    def __post_init__(self) -> None:
        if self.steps < 1 or self.probes < 1 or self.batch_size < 1:
            raise BadInputError(f"--ode-steps, --probes and the batch size must be >= 1 (got "
                                f"{self.steps}, {self.probes}, {self.batch_size})")


def divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               probes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), div f(x)) for a row-wise map f: ``[B, ...]`` -> ``[B, ...]``.

    ``probes`` None: exact, sum_i d f_i / d x_i with one backward pass per dimension.
    ``probes`` ``[P, B, D]``: Hutchinson, mean_p z_p^T (df/dx) z_p (one vector-Jacobian
    product per probe). Returns detached f ``[B, ...]`` and div ``[B]``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = fn(x)
        flat = f.reshape(f.shape[0], -1)
        div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
        if probes is None:
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + g.reshape(f.shape[0], -1)[:, i]
        else:
            for z in probes:
                (g,) = torch.autograd.grad((flat * z).sum(), x, retain_graph=True)
                div = div + (g.reshape(f.shape[0], -1) * z).sum(1)
            div = div / probes.shape[0]
    return f.detach(), div.detach()


class ProbabilityFlow:
    """The drift f(x, lambda) of the module docstring for one checkpoint set."""

    def __init__(self, cset: CheckpointSet, device: torch.device | str = "cpu") -> None:
        self.cset = cset
        self.den = Denoiser(cset, device=device)
        self.knots = np.arange(1, cset.T + 1, dtype=np.float64)  # tau = 1..T
        self.lam = -cset.schedule.log_alpha_bar[1:]  # lambda at the knots, increasing

    def lam_at(self, tau: float) -> float:
        """lambda(tau) = -log alpha_bar(tau), piecewise linear."""
        return float(np.interp(tau, self.knots, self.lam))

    def tau_at(self, lam: float) -> float:
        """The inverse map tau(lambda)."""
        return float(np.interp(lam, self.lam, self.knots))

    def grid(self, steps: int) -> np.ndarray:
        """``[steps + 1]`` lambdas from lambda_1 to lambda_T, equal steps in g (docstring)."""
        span = max(self.cset.T - 1, 1)
        g = (self.knots - 1) / span + (self.lam - self.lam[0]) / (self.lam[-1] - self.lam[0])
        return np.interp(np.linspace(0.0, g[-1], steps + 1), g, self.lam)

    def eps_at(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The network's unclipped eps prediction at integer t, differentiable in x."""
        man = self.cset.manifest
        net = self.den.member(int(self.cset.owner[t]))
        tb = torch.full((x.shape[0],), t, dtype=torch.int64, device=self.den.device)
        out = net(x.to(self.den.device, torch.float32), tb).to(x.device, x.dtype)
        pred, _ = split_output(out, x.shape[1], man.variance)
        if man.prediction == "eps":
            return pred
        ta = np.full(x.shape[0], t, dtype=np.int64)
        return eps_from_x0(man.schedule, x, ta, x0_from_prediction(man.schedule,
                                                                   man.prediction, x, ta, pred))

    def eps_hat(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """eps_hat(x, tau): linear in tau between the two neighbouring integers."""
        r = round(tau)
        tau = float(r) if abs(tau - r) < KNOT_TOL else tau
        lo = min(max(math.floor(tau), 1), self.cset.T)
        w = tau - lo
        if w <= 0 or lo == self.cset.T:
            return self.eps_at(x, lo)
        return (1 - w) * self.eps_at(x, lo) + w * self.eps_at(x, lo + 1)

    def drift(self, x: torch.Tensor, lam: float) -> torch.Tensor:
        """f(x, lambda) = -1/2 (x - eps_hat / sigma); Song et al. 2021, eq. (13), in lambda."""
        sigma = math.sqrt(-math.expm1(-lam))
        return -0.5 * (x - self.eps_hat(x, self.tau_at(lam)) / sigma)


def ode_nll(flow: ProbabilityFlow, x0: torch.Tensor, settings: ODESettings = ODESettings(),
            generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p(x_0) per example, ``[N]`` float64 nats (discrete data: the dequantized bound).

    x0: ``[N, *shape]`` on the flow's device, float64. The dequantization noise and the
    Hutchinson probes come from ``generator``.
    """
    levels = flow.cset.manifest.data.levels
    n = x0.shape[0]
    dims = int(np.prod(x0.shape[1:]))
    x = x0.to(torch.float64)
    bound = 0.0
    if levels is not None:  # uniform dequantization within each bin
        delta = 2.0 / (levels - 1)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        x = x + delta * (u - 0.5)
        bound = -dims * math.log(delta)
    probes = None
    if dims > settings.exact_max_dims:
        z = torch.randint(0, 2, (settings.probes, n, dims), generator=generator)
        probes = (2.0 * z - 1.0).to(x.device, torch.float64)
    lams = flow.grid(settings.steps)
    integral = torch.zeros(n, dtype=torch.float64, device=x.device)

    def F(lam: float, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return divergence(lambda v: flow.drift(v, lam), y, probes)

    for i in range(settings.steps):  # classic RK4 on (x, int div f dlambda)
        lam, h = float(lams[i]), float(lams[i + 1] - lams[i])
        k1, d1 = F(lam, x)
        k2, d2 = F(lam + h / 2, x + h / 2 * k1)
        k3, d3 = F(lam + h / 2, x + h / 2 * k2)
        k4, d4 = F(lam + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    log_prior = -0.5 * (x.reshape(n, -1) ** 2).sum(1) - 0.5 * dims * LOG_2PI  # N(0, I) at T
    return -(log_prior + integral) + bound


@dataclass(frozen=True)
class ODEEval:
    """Probability-flow bits/dim of a set on one split."""

    n: int  # examples
    bpd: float  # mean -log p(x) in bits/dim (discrete data: dequantized bound)
    bpd_se: float  # its standard error across examples
    steps: int  # RK4 steps
    divergence: str  # "exact" or "Hutchinson, P probes"
    dequantized: bool  # uniform dequantization was used (discrete data)
    seconds: float  # wall-clock time


def eval_ode(cset: CheckpointSet, data: DataSplit, samples: int | None = None, seed: int = 0,
             settings: ODESettings = ODESettings(), device: torch.device | str = "cpu",
             progress: ProgressFn | None = None) -> ODEEval:
    """Bits/dim by the probability-flow ODE on the examples eval-bpd uses for this seed."""
    start = time.perf_counter()
    if tuple(data.shape) != cset.manifest.data.shape:
        raise BadInputError(f"data {data.name} has shape {data.shape}, the set at {cset.path} "
                            f"was trained on {cset.manifest.data.shape}")
    x0_all = select_examples(data, samples or data.n, seed)
    flow = ProbabilityFlow(cset, device)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for a in range(0, x0_all.shape[0], settings.batch_size):
        xb = x0_all[a : a + settings.batch_size].to(device)
        parts.append(ode_nll(flow, xb, settings, g).cpu())
        report(progress, "ODE likelihood (examples)", a + xb.shape[0], x0_all.shape[0])
    bpd = nats_to_bpd(torch.cat(parts), data.dims)
    assert isinstance(bpd, torch.Tensor)
    bpd_mean, bpd_se = mean_and_se(bpd)
    n = bpd.shape[0]
    exact = data.dims <= settings.exact_max_dims
    return ODEEval(n=n, bpd=float(bpd_mean), bpd_se=float(bpd_se),
                   steps=settings.steps,
                   divergence="exact" if exact else f"Hutchinson, {settings.probes} probes",
                   dequantized=cset.manifest.data.levels is not None,
                   seconds=time.perf_counter() - start)
