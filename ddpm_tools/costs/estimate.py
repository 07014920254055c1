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

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import posterior_coeffs, q_sample, step_log_variance_bounds
from ddpm_tools.core.expsum import Method
from ddpm_tools.core.gaussian import prior_kl
from ddpm_tools.core.kl import decoder_cost, fixed_variance_kl, learned_range_kl
from ddpm_tools.core.stats import mean_and_se
from ddpm_tools.core.variances import StepVariance
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
EXPSUM_METHOD: Method = "auto"  # learned_range sums: "auto" (moments where they save work)
# or "direct" (term by term, the reference); see ddpm_tools.core.expsum
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
    ``gamma``, ``gamma_se``, ``mse``, ``mse_se``: [T+1] float64, the per-t statistics
    E||eps_hat||^2 / D and E||x_0 - x0_hat||^2 / D with standard errors (entry 0 and
    columns not done: 0); ``done``: [T+1] bool, which columns t are computed.
    """

    L: np.ndarray
    L_se: np.ndarray
    done: np.ndarray
    gamma: np.ndarray
    gamma_se: np.ndarray
    mse: np.ndarray
    mse_se: np.ndarray

    STATS = ("gamma", "gamma_se", "mse", "mse_se")  # names of the [T+1] statistics

    @classmethod
    def empty(cls, T: int) -> CostColumns:
        L = np.full((T + 1, T + 1), np.inf)
        z = np.zeros(T + 1)
        return cls(L=L, L_se=np.zeros_like(L), done=np.zeros(T + 1, dtype=bool),
                   gamma=z.copy(), gamma_se=z.copy(), mse=z.copy(), mse_se=z.copy())


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


def step_costs(cset: CheckpointSet, t: int, s: np.ndarray, x0: torch.Tensor,
               x0_hat: torch.Tensor, v: torch.Tensor | None,
               variance: StepVariance | None = None) -> torch.Tensor:
    """Per-example costs of the steps t -> s for each s in ``s``: ``[n, len(s)]`` nats.

    ``x0``, ``x0_hat``, ``v``: ``[n, ...]`` float64 on one device (x0_hat, v from the
    network at x_t). Where s = 0 the cost is the decoder -log p(x_0 | x_t) (its variance
    depends on t alone, docs/DESIGN.md); where s >= 1 it is KL(q(x_s|x_t,x_0) || p(x_s|x_t)),
    summed over dimensions (:mod:`ddpm_tools.core.kl`). ``variance``: the reverse
    variance (:class:`~ddpm_tools.core.variances.StepVariance`); None: the set's own.
    """
    man = cset.manifest
    sch = man.schedule
    var = variance or StepVariance(man.variance)
    s = np.asarray(s, dtype=np.int64)
    n = x0.shape[0]
    dims = int(np.prod(x0.shape[1:]))
    dev = x0.device
    out = torch.empty((n, s.shape[0]), dtype=torch.float64, device=dev)
    dec = np.flatnonzero(s == 0)
    if dec.size:
        lv: torch.Tensor | float
        if var.kind == "learned_range":
            assert v is not None
            small, large = step_log_variance_bounds(sch, 0, t)
            lv = v * float(large) + (1 - v) * float(small)
        else:
            lv = var.decoder_log_var(sch, t)
        out[:, dec] = decoder_cost(x0, x0_hat, lv, man.data.levels)[:, None]
    kl_cols = np.flatnonzero(s > 0)
    if kl_cols.size == 0:
        return out
    c = posterior_coeffs(sch, s[kl_cols], t)
    err2 = ((x0 - x0_hat) ** 2).reshape(n, -1)  # [n, D]
    coef2 = torch.as_tensor(c.coef_x0**2, device=dev)  # [m]
    log_bt = torch.as_tensor(c.log_beta_tilde, device=dev)
    cols = torch.as_tensor(kl_cols, device=dev)
    if var.kind != "learned_range":
        log_s2 = torch.as_tensor(var.log_sigma2(sch, s[kl_cols], t), device=dev)
        out[:, cols] = fixed_variance_kl(dims, log_bt, log_s2, coef2,
                                         err2.sum(1, keepdim=True))
        return out
    if v is None:
        raise BadInputError(f"the set at {cset.path} predicts no variance; choose another "
                            "--variance than learned_range")
    out[:, cols] = learned_range_kl(v.reshape(n, -1), err2, log_bt,
                                    torch.as_tensor(c.log_beta, device=dev), coef2,
                                    method=EXPSUM_METHOD)
    return out


@dataclass
class ColumnResult:
    """What one time t of the Monte Carlo loop gives, per example (float64, on the device)."""

    costs: torch.Tensor  # [n, m] nats of the steps t -> s
    eps2: torch.Tensor  # [n] ||eps_hat(x_t, t)||^2 / D (for Gamma_t, Analytic-DPM)
    err2: torch.Tensor  # [n] ||x_0 - x0_hat(x_t)||^2 / D (for m_t / D, the mse variance)


VarianceAt = Callable[[int, torch.Tensor, torch.Tensor], StepVariance]


def column_costs(den: Denoiser, x0: torch.Tensor, t: int, s: np.ndarray, seed: int,
                 stream: int, batch: AdaptiveBatch | int, device: torch.device | str = "cpu",
                 variance: StepVariance | VarianceAt | None = None,
                 rows: slice | np.ndarray | None = None) -> ColumnResult:
    """The one Monte Carlo loop of cost tables and eval-bpd: per-example step costs at t.

    1. for each batch of ``x0`` (``[n, ...]`` float64; ``batch``: examples per call, or an
       :class:`~ddpm_tools.sets.calls.AdaptiveBatch` that halves on GPU out-of-memory):
       x_t ~ q(x_t | x_0) with the noise of (``stream``, ``seed``, t) (:func:`noise_for`)
       and one network call;
    2. the per-example statistics ||eps_hat||^2 / D and ||x_0 - x0_hat||^2 / D;
    3. :func:`step_costs` of the steps t -> s for every s in ``s`` (``[m]``), per batch.
    ``variance``: a fixed :class:`StepVariance`, or a function ``(t, eps2, err2) ->
    StepVariance`` fitting it on this column's own statistics (cost tables with
    --variance analytic/mse); None: the set's own. ``rows``: only these examples of ``x0``
    (a torchrun rank's share), with the noise they get when all of ``x0`` is used.
    """
    dev = torch.device(device)
    cset = den.cset
    dims = int(np.prod(x0.shape[1:]))
    s = np.asarray(s, dtype=np.int64)
    eps = noise_for(t, seed, tuple(x0.shape), stream=stream)
    if rows is not None:
        x0, eps = x0[rows], eps[rows]
    n = x0.shape[0]
    eps2 = torch.empty(n, dtype=torch.float64, device=dev)
    err2 = torch.empty(n, dtype=torch.float64, device=dev)
    preds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def body(a: int, b: int) -> None:
        xb = x0[a:b].to(dev)
        tb = np.full(b - a, t, dtype=np.int64)
        x_t = q_sample(cset.schedule, xb, tb, eps[a:b].to(dev))
        pred = den(x_t, tb)
        assert pred.eps_hat is not None
        eps2[a:b] = (pred.eps_hat.reshape(b - a, -1) ** 2).sum(1) / dims
        err2[a:b] = ((xb - pred.x0_hat).reshape(b - a, -1) ** 2).sum(1) / dims
        preds.append((xb, pred.x0_hat, pred.v))  # eps_hat is no longer needed

    (batch if isinstance(batch, AdaptiveBatch) else AdaptiveBatch(batch)).run(n, body)
    var = variance(t, eps2, err2) if callable(variance) else variance
    out = torch.empty((n, s.shape[0]), dtype=torch.float64, device=dev)
    a = 0
    for xb, x0_hat, v in preds:
        out[a : a + xb.shape[0]] = step_costs(cset, t, s, xb, x0_hat, v, var)
        a += xb.shape[0]
    return ColumnResult(out, eps2, err2)


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
    m, se = mean_and_se(torch.stack(cols, 1))  # [len(times)] each
    prior[times], prior_se[times] = m.cpu().numpy(), se.cpu().numpy()
    return prior, prior_se


def compute_columns(cset: CheckpointSet, x0: torch.Tensor, settings: CostSettings,
                    times: list[int], cols: CostColumns, device: torch.device | str = "cpu",
                    progress: ProgressFn | None = None,
                    checkpoint: Callable[[CostColumns], None] | None = None,
                    variance: str | None = None) -> CostColumns:
    """Fill ``cols`` for each t in ``times`` not yet done: one network call per example.

    ``variance``: the reverse variance of the table (fixed_small, fixed_large,
    learned_range, analytic, mse; None: the set's own); analytic and mse are fitted on
    each column's own statistics (:mod:`ddpm_tools.core.variances`), which are stored in
    ``cols`` for every variance. Finished columns stay on the device and reach ``cols``
    together every :data:`FLUSH_SECONDS` and at the end (no host sync per column on a GPU
    beyond the two statistics); ``checkpoint``, if given, is then called as
    ``checkpoint(cols)`` (the caller decides how often to write it). The examples per
    network call start at ``settings.batch_size`` and halve on CUDA out-of-memory (said
    once via ``progress``).
    """
    den = Denoiser(cset, device=device, precision=settings.precision)
    dev = torch.device(device)
    kind = variance or cset.manifest.variance
    T = cset.T

    def fitted(t: int, eps2: torch.Tensor, err2: torch.Tensor) -> StepVariance:
        for name, per in (("gamma", eps2), ("mse", err2)):
            m, se = mean_and_se(per)
            getattr(cols, name)[t], getattr(cols, name + "_se")[t] = float(m), float(se)
        gamma = np.zeros(T + 1)
        mse = np.zeros(T + 1)
        gamma[t], mse[t] = cols.gamma[t], cols.mse[t]
        return StepVariance.fit(kind, cset.schedule, gamma, mse)

    todo = [t for t in times if not cols.done[t]]
    batch = AdaptiveBatch(settings.batch_size, lambda msg: warn(progress, msg))
    pending: list[tuple[int, torch.Tensor]] = []  # (t, [2, t] mean and se on the device)
    flushed = time.perf_counter()
    for k, t in enumerate(todo):
        res = column_costs(den, x0, t, np.arange(t), settings.seed, COST_STREAM, batch, dev,
                           variance=fitted)
        pending.append((t, torch.stack(mean_and_se(res.costs))))
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
