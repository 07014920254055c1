"""The headline numbers of a cost table, as ``inspect`` and ``cost-table`` report them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ddpm_tools.core.gaussian import nats_to_bpd
from ddpm_tools.costs.table_file import CostTable, predicted_bpd, read_cost_table


@dataclass(frozen=True)
class TableSummary:
    """What a cost table holds and predicts (no arrays)."""

    T: int  # diffusion steps
    dims: int  # D, for bits/dim
    n_samples: int | None  # examples averaged per entry
    split: str | None  # data split measured on
    seed: int | None  # seed of the examples and noise
    variance: str | None  # variance type of the set
    data: str | None  # data spec measured on
    set_sha256: str | None  # fingerprint of the set measured
    version: str  # file format version
    standard_errors: bool  # the table carries L_se
    prior_finite_at: list[int]  # the times t where a chain may start (finite prior)
    full_chain_bpd: float  # predicted bits/dim of all T steps from the prior at T
    prior_bpd: float  # the prior term at T alone, bits/dim (+inf without a prior at T)


def summarize_table(t: CostTable) -> TableSummary:
    """The :class:`TableSummary` of ``t``; bits/dim = nats / (D ln 2)."""
    return TableSummary(
        T=t.T, dims=t.dims, n_samples=t.n_samples, split=t.split, seed=t.seed,
        variance=t.variance, data=t.data, set_sha256=t.set_sha256, version=t.version,
        standard_errors=t.L_se is not None,
        prior_finite_at=np.flatnonzero(np.isfinite(t.prior)).tolist(),
        full_chain_bpd=predicted_bpd(t, np.arange(t.T + 1)),
        prior_bpd=float(nats_to_bpd(float(t.prior[t.T]), t.dims)))


def inspect_table(path: str | os.PathLike[str]) -> TableSummary:
    """The :class:`TableSummary` of the cost-table file at ``path`` (checked on reading)."""
    return summarize_table(read_cost_table(path))
