"""Bits/dim of any schedule on held-out data: an unbiased Monte Carlo negative ELBO.

For a schedule 0 = tau_0 < ... < tau_K = T (Watson et al. 2021, eq. (3)):
    -ELBO(x_0) = KL(q(x_T|x_0) || N(0, I))                       (prior)
               + sum_{i >= 2} E KL(q(x_{tau_{i-1}}|x_{tau_i}, x_0) || p(.|x_{tau_i}))   (steps)
               + E -log p(x_0 | x_{tau_1})                        (decoder)
Each expectation is estimated with one x_t ~ q(x_t | x_0) per example and time, as
improved-diffusion's ``calc_bpd_loop`` does. The noise comes from a stream of its own
(:data:`ddpm_tools.costs.estimate.EVAL_STREAM`), so it is independent of the cost table's; all
schedules evaluated together share the examples and the x_t at every common t, so
their per-example differences are paired and have their own standard errors.

A schedule starting at tau_K < T (a truncated chain) starts from the set's auxiliary
prior p_aux at tau_K; its prior term is then E log q(x_tau_K|x_0) - log p_aux(x_tau_K)
per example (:func:`ddpm_tools.priors.aux_prior_nats`), on the same x_tau_K the step from
tau_K uses (the eval noise stream).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import q_sample
from ddpm_tools.core.gaussian import prior_kl
from ddpm_tools.costs.estimate import EVAL_STREAM, noise_for, select_examples, step_costs
from ddpm_tools.data import DataSplit
from ddpm_tools.device import torchrun_ranks
from ddpm_tools.errors import BadInputError
from ddpm_tools.likelihood.distributed import gather_examples, rank_rows
from ddpm_tools.likelihood.ode import ODEEval, ODESettings, eval_ode
from ddpm_tools.priors.terms import aux_prior_nats, start_priors
from ddpm_tools.progress import ProgressFn, report, warn
from ddpm_tools.sets.calls import AdaptiveBatch
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.denoiser import Denoiser


@dataclass(frozen=True)
class ScheduleEval:
    """Bits/dim of one schedule on one split, with its decomposition."""

    label: str  # how the schedule was given (dp:32, even:8, full, a file name)
    budget: int  # K, network calls per sample
    timesteps: list[int]  # 0 = tau_0 < ... < tau_K
    n: int  # examples
    bpd: float  # negative ELBO in bits/dim (mean over examples)
    bpd_se: float  # its standard error
    prior_bpd: float  # prior term, bits/dim
    steps_bpd: float  # sum of the KL steps with s >= 1, bits/dim
    decoder_bpd: float  # decoder term, bits/dim
    diff_bpd: float | None  # paired difference to the first schedule, bits/dim
    diff_se: float | None  # standard error of that difference


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def eval_bpd(cset: CheckpointSet, data: DataSplit, schedules: list[tuple[str, np.ndarray]],
             samples: int | None = None, seed: int = 0, batch_size: int = 256,
             device: torch.device | str = "cpu", progress: ProgressFn | None = None,
             precision: str = "fp32") -> list[ScheduleEval]:
    """Evaluate every schedule on the same examples and noise; see the module docstring.

    ``schedules``: (label, timesteps [K+1]) pairs, each 0 = tau_0 < ... < tau_K, with
    tau_K = T or a time where the set has an auxiliary prior (else BadInputError).
    ``samples``: examples of the split used (None: all of them). ``precision``: the
    networks' autocast (:mod:`ddpm_tools.sets.calls`). Under torchrun each rank scores
    its block of the examples and rank 0 returns the results of all of them (the other
    ranks return []): :mod:`ddpm_tools.likelihood.distributed`.
    """
    if not schedules:
        raise BadInputError("give at least one --schedule")
    T = cset.T
    if tuple(data.shape) != cset.manifest.data.shape:
        raise BadInputError(f"data {data.name} has shape {data.shape}, the set at {cset.path} "
                            f"was trained on {cset.manifest.data.shape}")
    starts = start_priors(cset, schedules)
    taus = [tau for tau, _ in starts]
    x0_all = select_examples(data, samples or data.n, seed)
    dims, ranks = data.dims, torchrun_ranks()
    rows = rank_rows(x0_all.shape[0], batch_size, ranks)  # this rank's examples
    x0 = x0_all[rows]
    n = x0.shape[0]
    dev = torch.device(device)

    # 1. the prior term, per example: closed form at T, Monte Carlo with an auxiliary prior
    prior = np.zeros((len(schedules), n))
    for j, (_, aux) in enumerate(starts):
        if aux is None:
            kl = prior_kl(x0, float(cset.schedule.log_alpha_bar[T]))
            prior[j] = kl.flatten(1).sum(1).numpy()
        else:
            eps = noise_for(aux.t, seed, tuple(x0_all.shape), stream=EVAL_STREAM)[rows]
            prior[j] = aux_prior_nats(aux, cset.schedule, x0, eps).numpy()
    steps = torch.zeros((len(schedules), n), dtype=torch.float64, device=dev)  # on the device:
    decoder = torch.zeros_like(steps)  # one copy to the host at the end, none per t

    # 2. which (schedule, s) pairs need the network at each t
    uses: dict[int, list[tuple[int, int]]] = {}
    for j, tau in enumerate(taus):
        for i in range(1, len(tau)):
            uses.setdefault(int(tau[i]), []).append((j, int(tau[i - 1])))

    # 3. one x_t and one network call per example and t, shared by all schedules
    den = Denoiser(cset, device=dev, precision=precision)
    batch = AdaptiveBatch(batch_size, lambda msg: warn(progress, msg))
    for k, t in enumerate(sorted(uses)):
        pairs = uses[t]
        s_arr = np.array([s for _, s in pairs], dtype=np.int64)
        eps = noise_for(t, seed, tuple(x0_all.shape), stream=EVAL_STREAM)[rows]
        cost = torch.empty((n, len(pairs)), dtype=torch.float64, device=dev)

        def body(a: int, b: int, t: int = t, s_arr: np.ndarray = s_arr,
                 eps: torch.Tensor = eps, cost: torch.Tensor = cost) -> None:
            xb = x0[a:b].to(dev)
            tb = np.full(b - a, t, dtype=np.int64)
            x_t = q_sample(cset.schedule, xb, tb, eps[a:b].to(dev))
            pred = den(x_t, tb)
            cost[a:b] = step_costs(cset, t, s_arr, xb, pred.x0_hat, pred.v)

        batch.run(n, body)
        for col, (j, s) in enumerate(pairs):
            (decoder if s == 0 else steps)[j] += cost[:, col]
        report(progress, "eval-bpd (over t)", k + 1, len(uses))

    # 4. reduce on rank 0, over all examples in their order: bits/dim with standard
    #    errors, paired differences to the first schedule
    every = gather_examples(ranks, np.stack([prior, steps.cpu().numpy(),
                                             decoder.cpu().numpy()]))  # [3, J, n_all]
    if every is None:
        return []
    prior, steps, decoder = every
    n = prior.shape[1]
    to_bpd = 1.0 / (dims * math.log(2.0))
    totals = prior + steps + decoder
    out = []
    for j, (label, _) in enumerate(schedules):
        m, se = _mean_se(totals[j] * to_bpd)
        d, dse = _mean_se((totals[j] - totals[0]) * to_bpd) if j > 0 else (None, None)
        out.append(ScheduleEval(
            label=label, budget=len(taus[j]) - 1, timesteps=[int(x) for x in taus[j]], n=n,
            bpd=m, bpd_se=se, prior_bpd=float(prior[j].mean() * to_bpd),
            steps_bpd=float(steps[j].mean() * to_bpd),
            decoder_bpd=float(decoder[j].mean() * to_bpd), diff_bpd=d, diff_se=dse))
    return out


METHODS: tuple[str, ...] = ("elbo", "ode")  # eval-bpd --method


@dataclass(frozen=True)
class LikelihoodEval:
    """What ``eval-bpd`` reports: the ELBO of each schedule, and the ODE likelihood."""

    method: str  # "elbo" or "ode"
    elbo: list[ScheduleEval]  # negative ELBO per schedule (always computed)
    ode: ODEEval | None  # probability-flow ODE bits/dim (method "ode"), same examples


def eval_likelihood(cset: CheckpointSet, data: DataSplit,
                    schedules: list[tuple[str, np.ndarray]], method: str = "elbo",
                    samples: int | None = None, seed: int = 0, batch_size: int = 256,
                    device: torch.device | str = "cpu", ode: ODESettings = ODESettings(),
                    progress: ProgressFn | None = None, precision: str = "fp32"
                    ) -> LikelihoodEval:
    """:func:`eval_bpd` of ``schedules``; with ``method="ode"`` also the probability-flow
    ODE bits/dim (:func:`ddpm_tools.likelihood.ode.eval_ode`) on the same examples, and the full
    chain as the ELBO to compare with when no schedule is given. Under torchrun (ELBO
    only) rank 0 gets the results, the other ranks an empty list."""
    if method not in METHODS:
        raise BadInputError(f"unknown --method {method!r}; choose elbo (negative ELBO of a "
                            "schedule) or ode (probability-flow ODE likelihood)")
    ranks = torchrun_ranks()
    if method == "ode" and ranks is not None and ranks.world > 1:
        raise BadInputError("eval-bpd --method ode does not split over torchrun ranks; run "
                            "it as one process (without torchrun)")
    if method == "ode" and not schedules:
        schedules = [("full", np.arange(cset.T + 1, dtype=np.int64))]
    elbo = eval_bpd(cset, data, schedules, samples=samples, seed=seed,
                    batch_size=batch_size, device=device, progress=progress,
                    precision=precision)
    flow = (eval_ode(cset, data, samples=samples, seed=seed, settings=ode, device=device,
                     progress=progress) if method == "ode" else None)
    return LikelihoodEval(method, elbo, flow)
