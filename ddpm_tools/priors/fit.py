"""Fitting auxiliary priors on diffused training data (``ddpm-tools train-prior``).

For each requested t: the train split's examples are split (seeded) into a fitting part
and a held-out part (``heldout`` of them); ``samples`` points x_t = sqrt(alpha_bar_t) x_0
+ sqrt(1 - alpha_bar_t) eps are drawn from the fitting part (its examples cycled, fresh
noise for each point) and the density is fitted on them; each held-out example gets one
x_t, on which the held-out log-likelihood and the prior cost
E log q(x_t|x_0) - E log p_aux(x_t) (:mod:`ddpm_tools.priors.terms`) are measured. The
test split is never touched, so eval-bpd still scores unseen data.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_tools.core.diffusion import q_sample
from ddpm_tools.core.stats import mean_and_se
from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.priors.flow import FlowConfig, fit_flow
from ddpm_tools.priors.gmm import fit_gmm
from ddpm_tools.priors.model import AuxPrior, PriorConfig, PriorInfo
from ddpm_tools.priors.store import save_prior
from ddpm_tools.priors.terms import neg_entropy_q
from ddpm_tools.progress import ProgressFn, report
from ddpm_tools.sets.checkpoint_set import CheckpointSet
from ddpm_tools.sets.load import load_set


@dataclass(frozen=True)
class FitSettings:
    """Which diffused points a prior is fitted and scored on."""

    samples: int = 20_000  # diffused points to fit on (fitting examples cycled, fresh noise)
    heldout: float = 0.2  # fraction of the train split's examples held out for scoring
    seed: int = 0  # picks the split, the noise and the fit's randomness

    def __post_init__(self) -> None:
        if self.samples < 2 or not 0 < self.heldout < 1:
            raise BadInputError(f"--samples must be >= 2 and the held-out fraction in (0, 1) "
                                f"(got {self.samples}, {self.heldout})")


def _generator(seed: int, t: int) -> torch.Generator:
    """An independent stream per (seed, t)."""
    state = np.random.SeedSequence([seed, t]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def check_prior_time(t: int, T: int) -> None:
    """1 <= t < T (an integer), else one sentence."""
    if isinstance(t, bool) or int(t) != t or not 1 <= t < T:
        raise BadInputError(f"--at {t} is outside 1..{T - 1}: an auxiliary prior replaces the "
                            f"diffusion above t, so it needs 1 <= t < T = {T}")


def fit_prior(cset: CheckpointSet, data: DataSplit, t: int, config: PriorConfig,
              settings: FitSettings = FitSettings(), progress: ProgressFn | None = None
              ) -> AuxPrior:
    """Fit p_aux(x_t) on the diffused train split (module docstring); not saved."""
    start = time.perf_counter()
    check_prior_time(t, cset.T)
    if tuple(data.shape) != cset.manifest.data.shape:
        raise BadInputError(f"data {data.name} has shape {data.shape}, the set at {cset.path} "
                            f"was trained on {cset.manifest.data.shape}")
    if data.n < 4:
        raise BadInputError(f"the {data.split} split of {data.name} has {data.n} examples; "
                            "fitting and scoring a prior needs at least 4")
    g = _generator(settings.seed, t)
    x0 = torch.as_tensor(data.x, dtype=torch.float64).reshape(data.n, -1)
    perm = torch.randperm(data.n, generator=g)
    n_held = min(max(2, round(settings.heldout * data.n)), data.n - 2)
    held, fit_idx = x0[perm[:n_held]], x0[perm[n_held:]]
    x_fit = _diffuse(cset, fit_idx[torch.arange(settings.samples) % fit_idx.shape[0]], t, g)
    eps_held = torch.randn(held.shape, generator=g, dtype=torch.float64)
    density = (fit_flow(x_fit, config, g, progress).model if isinstance(config, FlowConfig)
               else fit_gmm(x_fit, config, g).model)
    with torch.no_grad():
        log_p_held = density.log_prob(_diffuse(cset, held, t, None, eps_held))  # [n_held]
        train_ll = float(density.log_prob(x_fit).mean())
    # per-example prior cost: E log q(x_t|x_0) (closed form) - log p_aux(x_t)
    prior_m, prior_s = mean_and_se(neg_entropy_q(cset.schedule, t, x0.shape[1]) - log_p_held)
    prior_nats, prior_se = float(prior_m), float(prior_s)
    info = PriorInfo(
        data=data.name, n_train=int(x_fit.shape[0]), n_heldout=n_held, seed=settings.seed,
        train_ll=train_ll, heldout_ll=float(log_p_held.mean()), prior_nats=prior_nats,
        prior_se=prior_se, seconds=time.perf_counter() - start)
    return AuxPrior(t, config, tuple(cset.manifest.data.shape), density, info)


def _diffuse(cset: CheckpointSet, x0: torch.Tensor, t: int, g: torch.Generator | None,
             eps: torch.Tensor | None = None) -> torch.Tensor:
    """x_t ``[N, D]`` for flattened x0 ``[N, D]`` (noise from ``g`` unless given)."""
    if eps is None:
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return q_sample(cset.schedule, x0, np.full(x0.shape[0], t, dtype=np.int64), eps)


def train_priors(set_dir: str | os.PathLike[str], data: str, times: Sequence[int],
                 config: PriorConfig, settings: FitSettings = FitSettings(),
                 progress: ProgressFn | None = None) -> list[AuxPrior]:
    """Fit a prior at each t in ``times`` on the train split of ``data`` and store each
    with the set (``<set>/priors``); returns them in the order of ``times`` (a repeated
    t is fitted once)."""
    if not times:
        raise BadInputError("give at least one --at t (a time to fit a prior at), e.g. --at 200")
    cset = load_set(set_dir, require_trained=False)
    for t in times:
        check_prior_time(t, cset.T)
    split = load_data(data, "train", seed=settings.seed)
    unique = list(dict.fromkeys(int(t) for t in times))
    out = []
    for k, t in enumerate(unique):
        with one_thread():
            prior = fit_prior(cset, split, t, config, settings, progress)
        save_prior(cset, prior)
        out.append(prior)
        report(progress, "auxiliary priors (over t)", k + 1, len(unique))
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the duration, then as before: EM and the small
    flow are many tiny tensor operations, which extra threads only slow down (ten times
    on a busy two-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
