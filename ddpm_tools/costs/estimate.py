"""The KL cost table of a checkpoint set (Watson et al. 2021, Sec. 3).

The negative ELBO of a K-step schedule 0 = tau_0 < ... < tau_K = T is
    prior[tau_K] + sum_i L[tau_{i-1}, tau_i]
with L[s, t] = E_{x_0, x_t} KL(q(x_s | x_t, x_0) || p(x_s | x_t)) for s >= 1 and
L[0, t] = E -log p(x_0 | x_t) (the decoder). One table of every step's cost, fitted
once, lets the DP find the best schedule for every budget.

Cost structure used here (exactly T network calls per example):
  * for each t one x_t ~ q(x_t | x_0) (noise seeded by (seed, t)) and one call,
    reused for every s < t;
  * fixed variances: the KL of two Gaussians with fixed variances is
        L[s, t] = D/2 (log(sigma2/beta_tilde) + beta_tilde/sigma2 - 1)
                  + coef_x0(s, t)^2 / (2 sigma2) E||x_0 - x0_hat(x_t)||^2
    (Ho et al. 2020, eq. (8), with skip coefficients), so the T^2 table costs O(T^2);
  * learned_range: per-dimension KLs for every s < t, in chunks on the device.
Standard errors are across examples (one x_t per example and t).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import posterior_coeffs, q_sample, step_log_variance_bounds
from ddpm_tools.core.gaussian import decoder_nll, prior_kl
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError
from ddpm_tools.priors.model import AuxPrior
from ddpm_tools.priors.terms import aux_prior_nats
from ddpm_tools.progress import ProgressFn, report, warn
from ddpm_tools.sets.calls import AdaptiveBatch
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.denoiser import Denoiser

COST_STREAM = 0  # noise stream of cost tables
EVAL_STREAM = 1  # noise stream of eval-bpd: fresh noise, independent of the cost table
CHUNK_ELEMENTS = 1 << 24  # learned_range: elements per (examples x dims x s) chunk
FLUSH_SECONDS = 5.0  # columns computed on a GPU reach the host (and checkpoint) this often


@dataclass(frozen=True)
class CostSettings:
    """How a cost table is estimated."""

    samples: int = 512  # examples of the split used (first of a seeded permutation)
    batch_size: int = 256  # examples per network call
    seed: int = 0  # picks the examples and the noise; same seed, same table
    precision: str = "fp32"  # network autocast: fp32, bf16 or fp16 (KL math stays float64)


@dataclass
class CostColumns:
    """Per-time results: column t of L (mean and standard error over examples).

    Shapes: ``L``, ``L_se``: [T+1, T+1] float64 (entries s >= t unused, +inf);
    ``done``: [T+1] bool, which columns t are computed.
    """

    L: np.ndarray
    L_se: np.ndarray
    done: np.ndarray

    @classmethod
    def empty(cls, T: int) -> CostColumns:
        L = np.full((T + 1, T + 1), np.inf)
        return cls(L=L, L_se=np.zeros_like(L), done=np.zeros(T + 1, dtype=bool))


def select_examples(data: DataSplit, samples: int, seed: int) -> torch.Tensor:
    """The first ``samples`` examples of a seeded permutation, float64 ``[n, ...]``."""
    if samples < 2:
        raise BadInputError("--samples must be at least 2 (standard errors need two examples)")
    perm = np.random.default_rng(seed).permutation(data.n)[: min(samples, data.n)]
    return torch.as_tensor(data.x[np.sort(perm)], dtype=torch.float64)


def noise_for(t: int, seed: int, shape: tuple[int, ...], stream: int = COST_STREAM
              ) -> torch.Tensor:
    """The fixed noise ``[n, ...]`` float64 for time t: one draw per (stream, seed, t).

    Every consumer of the same (stream, seed, t) sees the same draw, so shards, resumed
    runs and schedules compared side by side share their x_t.
    """
    state = np.random.SeedSequence([stream, seed, t]).generate_state(2, dtype=np.uint32)
    g = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _mean_se_device(per_example: torch.Tensor) -> torch.Tensor:
    """``[2, m]``: mean and standard error over dim 0 of ``[n, m]``, on its device."""
    n = per_example.shape[0]
    m = per_example.mean(0)
    se = per_example.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.zeros_like(m)
    return torch.stack([m, se])


def _mean_se(per_example: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over dim 0 (float64 numpy)."""
    m, se = _mean_se_device(per_example).cpu().numpy()
    return m, se


def step_costs(cset: CheckpointSet, t: int, s: np.ndarray, x0: torch.Tensor,
               x0_hat: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """Per-example costs of the steps t -> s for each s in ``s``: ``[n, len(s)]`` nats.

    ``x0``, ``x0_hat``, ``v``: ``[n, ...]`` float64 on one device (x0_hat, v from the
    network at x_t). Where s = 0 the cost is the decoder -log p(x_0 | x_t) (its variance
    depends on t alone, DESIGN.md); where s >= 1 it is KL(q(x_s|x_t,x_0) || p(x_s|x_t)),
    summed over dimensions.
    """
    man = cset.manifest
    sch = man.schedule
    s = np.asarray(s, dtype=np.int64)
    n = x0.shape[0]
    dims = int(np.prod(x0.shape[1:]))
    dev = x0.device
    out = torch.empty((n, s.shape[0]), dtype=torch.float64, device=dev)
    dec = np.flatnonzero(s == 0)
    if dec.size:
        small, large = step_log_variance_bounds(sch, 0, t)
        lv: torch.Tensor | float
        if man.variance == "learned_range":
            assert v is not None
            lv = v * float(large) + (1 - v) * float(small)
        else:
            lv = float(small if man.variance == "fixed_small" else large)
        nll = decoder_nll(x0, x0_hat, lv, man.data.levels).reshape(n, -1).sum(1)
        out[:, dec] = nll[:, None]
    kl_cols = np.flatnonzero(s > 0)
    if kl_cols.size == 0:
        return out
    c = posterior_coeffs(sch, s[kl_cols], t)
    err2 = ((x0 - x0_hat) ** 2).reshape(n, -1)  # [n, D]
    coef2 = torch.as_tensor(c.coef_x0**2, device=dev)  # [m]
    log_bt = torch.as_tensor(c.log_beta_tilde, device=dev)
    cols = torch.as_tensor(kl_cols, device=dev)
    if man.variance != "learned_range":
        log_s2 = torch.as_tensor(c.log_beta_tilde if man.variance == "fixed_small"
                                 else c.log_beta, device=dev)
        const = 0.5 * dims * (log_s2 - log_bt + torch.exp(log_bt - log_s2) - 1.0)  # [m]
        out[:, cols] = const[None, :] + 0.5 * (coef2 * torch.exp(-log_s2))[None, :] \
            * err2.sum(1, keepdim=True)
        return out
    # learned_range: log sigma2 = log_bt + u * delta with delta = log beta - log beta_tilde,
    # so per dimension KL = 0.5 (u delta + e^{-u delta} - 1 + coef^2 err^2 e^{-log_bt - u delta})
    assert v is not None
    u = v.reshape(n, -1)  # [n, D]
    delta = torch.as_tensor(c.log_beta - c.log_beta_tilde, device=dev)  # [m]
    chunk = max(1, CHUNK_ELEMENTS // max(1, n * dims))
    u_sum = u.sum(1, keepdim=True)  # sum_d u_d delta = delta sum_d u_d
    for a in range(0, kl_cols.size, chunk):
        d = delta[a : a + chunk]  # [c]
        e = torch.exp(u[:, :, None] * (-d)[None, None, :])  # [n, D, c] e^{-u delta}
        kl = 0.5 * (u_sum * d[None, :] + e.sum(1) - dims
                    + (coef2[a : a + chunk] * torch.exp(-log_bt[a : a + chunk]))[None, :]
                    * torch.einsum("nd,ndc->nc", err2, e))
        out[:, cols[a : a + d.shape[0]]] = kl
    return out


def prior_costs(cset: CheckpointSet, x0: torch.Tensor, seed: int = 0,
                priors: dict[int, AuxPrior] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """prior [T+1] and its standard error over examples (+inf where there is no prior).

    At t = T: KL(q(x_T|x_0) || N(0, I)) in closed form. At each t of ``priors`` (the
    set's auxiliary priors, :func:`ddpm_tools.priors.load_priors`):
    E log q(x_t|x_0) - E log p_aux(x_t), closed-form entropy plus a Monte Carlo
    cross-entropy on the cost table's own x_t (noise ``(COST_STREAM, seed, t)``), see
    :mod:`ddpm_tools.priors.terms`. x0: ``[n, ...]`` float64.
    """
    T = cset.T
    prior = np.full(T + 1, np.inf)
    prior_se = np.zeros(T + 1)
    n = x0.shape[0]
    cols = [prior_kl(x0, float(cset.schedule.log_alpha_bar[T])).reshape(n, -1).sum(1)]
    times = [T]
    for t, aux in sorted((priors or {}).items()):
        eps = noise_for(t, seed, tuple(x0.shape))  # the x_t of column t of L
        cols.append(aux_prior_nats(aux, cset.schedule, x0.cpu(), eps).to(cols[0]))
        times.append(t)
    m, se = _mean_se(torch.stack(cols, 1))  # [len(times)] each
    prior[times], prior_se[times] = m, se
    return prior, prior_se


def compute_columns(cset: CheckpointSet, x0: torch.Tensor, settings: CostSettings,
                    times: list[int], cols: CostColumns, device: torch.device | str = "cpu",
                    progress: ProgressFn | None = None,
                    checkpoint: Callable[[CostColumns], None] | None = None) -> CostColumns:
    """Fill ``cols`` for each t in ``times`` not yet done: one network call per example.

    Finished columns stay on the device and reach ``cols`` together every
    :data:`FLUSH_SECONDS` and at the end (no host sync per column on a GPU);
    ``checkpoint``, if given, is then called as ``checkpoint(cols)`` (the caller decides
    how often to write it). The examples per network call start at
    ``settings.batch_size`` and halve on CUDA out-of-memory (said once via ``progress``).
    """
    den = Denoiser(cset, device=device, precision=settings.precision)
    dev = torch.device(device)
    n = x0.shape[0]
    todo = [t for t in times if not cols.done[t]]
    batch = AdaptiveBatch(settings.batch_size, lambda msg: warn(progress, msg))
    pending: list[tuple[int, torch.Tensor]] = []  # (t, [2, t] mean and se on the device)
    flushed = time.perf_counter()
    for k, t in enumerate(todo):
        per = torch.empty((n, t), dtype=torch.float64, device=dev)
        eps = noise_for(t, settings.seed, tuple(x0.shape))

        def body(a: int, b: int, t: int = t, per: torch.Tensor = per,
                 eps: torch.Tensor = eps) -> None:
            xb = x0[a:b].to(dev)
            tb = np.full(b - a, t, dtype=np.int64)
            x_t = q_sample(cset.schedule, xb, tb, eps[a:b].to(dev))
            pred = den(x_t, tb)
            per[a:b] = step_costs(cset, t, np.arange(t), xb, pred.x0_hat, pred.v)

        batch.run(n, body)
        pending.append((t, _mean_se_device(per)))
        if k + 1 == len(todo) or time.perf_counter() - flushed >= FLUSH_SECONDS:
            for tp, stats in pending:
                m, se = stats.cpu().numpy()
                cols.L[:tp, tp], cols.L_se[:tp, tp] = m, se
                cols.done[tp] = True
            pending, flushed = [], time.perf_counter()
            if checkpoint is not None:
                checkpoint(cols)
        report(progress, "cost table (over t)", k + 1, len(todo))
    return cols
