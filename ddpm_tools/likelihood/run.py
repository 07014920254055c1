"""``eval-bpd`` as one call: load a set once, resolve the named schedules on it (``dp:K``
on its train-split table), and score them on a data split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.likelihood.elbo import LikelihoodEval, eval_likelihood
from ddpm_tools.likelihood.ode import ODESettings
from ddpm_tools.progress import ProgressFn
from ddpm_tools.schedules.spec import CostSource, resolve_schedule
from ddpm_tools.sets.load import load_set


def eval_schedules(
    set_dir: str | os.PathLike[str], data: str, schedules: Sequence[str], *,
    split: str = "test", samples: int | None = None, table_samples: int = 512,
    costs: Path | None = None, batch_size: int = 256, seed: int = 0, method: str = "elbo",
    ode: ODESettings = ODESettings(), device: str = "cpu", progress: ProgressFn | None = None,
    precision: str = "fp32",
) -> LikelihoodEval:
    """Bits/dim of each schedule spec (``FILE``, ``dp:K``, ``even:K``, ... see
    :mod:`ddpm_tools.schedules.spec`) of the set at ``set_dir`` on ``data``'s ``split``.

    ``dp:K`` is solved on the set's train-split table of ``table_samples`` examples (or
    on ``costs``, checked against the set); the set is loaded once for all of it.
    ``samples``, ``seed``, ``batch_size``, ``method``, ``ode`` and ``precision`` are those
    of :func:`ddpm_tools.likelihood.elbo.eval_likelihood` (under torchrun the ranks split
    the examples and only rank 0 gets the results).
    """
    cset = load_set(set_dir)
    split_data = load_data(data, split, seed=seed)
    source = CostSource(data, CostSettings(samples=table_samples, seed=seed), device, costs)
    taus = [resolve_schedule(s, cset, source, progress) for s in schedules]
    return eval_likelihood(cset, split_data, taus, method=method, samples=samples, seed=seed,
                           batch_size=batch_size, device=device, ode=ode, progress=progress,
                           precision=precision)
