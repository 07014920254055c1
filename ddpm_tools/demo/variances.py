"""The demo's comparison of reverse variances (``ddpm-tools demo --variances``).

For the digits sets (4-interval and single; trained with learned_range and, trained
here too, with fixed_large) and each ``--variance`` (trained, fixed_small, fixed_large,
analytic, mse): the set's train-split table for that variance, the DP schedule at each
K, and held-out bits/dim of DP and even strides on the test split (same examples and
noise for every variance and schedule, so all differences are paired); the DP - even
difference with its own standard error; samples along dp:32 and their scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_tools.core.dp import solve_schedules
from ddpm_tools.core.strides import even_stride
from ddpm_tools.core.variances import VARIANCES, StepVariance, resolve_variance
from ddpm_tools.costs.build import cached_cost_table, set_fingerprint
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.data import load_data
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.metrics.evaluate_samples import evaluate_samples
from ddpm_tools.models import MLPConfig
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sampling.sample_file import draw_samples
from ddpm_tools.schedules.optimize import standard_prior
from ddpm_tools.sets import CheckpointSet, load_set
from ddpm_tools.training.api import train
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec

VARIANCE_BUDGETS = (4, 8, 16, 32, 64, 256)  # K compared across variances
VARIANCE_SAMPLE_BUDGET = 32  # dp:K sampled under each variance
TRAINED_WITH = ("learned_range", "fixed_large")  # how the compared digits sets were trained


def _fit(cset: CheckpointSet, data: str, settings: CostSettings, variance: str,
         progress: ProgressFn | None) -> tuple[Any, StepVariance]:
    table, _ = cached_cost_table(cset, data, "train", settings, progress=progress,
                                 variance=variance)
    kind = resolve_variance(variance, cset.manifest.variance)
    return table, StepVariance.fit(kind, cset.schedule, table.gamma, table.mse)


def _one_variance(set_dir: Path, data: str, settings: CostSettings, variance: str,
                  eval_samples: int, sample_n: int, out: Path, seed: int,
                  progress: ProgressFn | None) -> dict[str, Any]:
    """Bits/dim of DP and even at every K, and dp:32 samples, under one variance."""
    cset = load_set(set_dir)
    table, var = _fit(cset, data, settings, variance, progress)
    test = load_data(data, "test", seed=seed)
    rows = []
    dp32: np.ndarray | None = None
    for K in (k for k in VARIANCE_BUDGETS if k <= cset.T):
        dp = solve_schedules(table.L, standard_prior(table.prior), [K])[0]
        res = eval_bpd(cset, test, [(f"dp:{K}", dp.timesteps),
                                    (f"even:{K}", even_stride(cset.T, K))],
                       samples=eval_samples, seed=seed, progress=progress, variance=var)
        rows.append({"K": K, "dp": {"bpd": res[0].bpd, "se": res[0].bpd_se},
                     "even": {"bpd": res[1].bpd, "se": res[1].bpd_se},
                     "even_minus_dp": {"bpd": res[1].diff_bpd, "se": res[1].diff_se},
                     "dp_timesteps": dp.timesteps.tolist()})
        if K == VARIANCE_SAMPLE_BUDGET:
            dp32 = dp.timesteps
    samples = None
    if dp32 is not None:
        npz = out / f"samples-{set_dir.name}-dp{VARIANCE_SAMPLE_BUDGET}-{variance}.npz"
        draw_samples(cset, f"dp:{VARIANCE_SAMPLE_BUDGET}", dp32, sample_n, npz, seed=seed,
                     progress=progress, variance=var)
        rep = evaluate_samples(npz, data, "test", seed=seed)
        samples = {"npz": npz.name, "metrics": [{"name": m.name, "value": m.value, "se": m.se}
                                                for m in rep.metrics]}
    return {"variance": var.kind, "clipped": list(var.clipped), "rows": rows,
            "samples": samples}


def compare_variances(plan: Any, cfg: Any, out: Path, cached: Callable[..., Any],
                      progress: ProgressFn | None = None) -> dict[str, Any]:
    """Every digits set x every variance (cached per set and variance via ``cached``).

    ``plan``: the demo's digits :class:`~ddpm_tools.demo.run.DataPlan`; ``cfg``: its
    :class:`~ddpm_tools.demo.run.DemoConfig`.
    """
    result: dict[str, Any] = {}
    ddir = out / plan.data
    for trained_with in TRAINED_WITH:
        p = replace(plan, variance=trained_with)
        for name, intervals in (("4-interval", 4), ("single", 1)):
            suffix = "" if trained_with == plan.variance else f"-{trained_with}"
            set_dir = (out / "sets"
                       / f"{p.data}-{'4int' if intervals == 4 else 'single'}{suffix}")
            t0 = time.perf_counter()
            spec = SetSpec(intervals=intervals, partition="uniform", arch="mlp",
                           schedule=p.schedule, T=p.T, variance=p.variance)
            tcfg = TrainConfig(steps=p.steps, batch_size=128, lr=1e-3, ema=0.999,
                               checkpoint_every=max(100, p.steps // 4), seed=cfg.seed)
            train(set_dir, p.data, spec, tcfg, workers=cfg.workers,
                  arch_config=MLPConfig(hidden=p.hidden, depth=3), progress=progress)
            fp = set_fingerprint(load_set(set_dir))
            settings = CostSettings(samples=p.table_samples, seed=cfg.seed)
            per = {}
            for variance in VARIANCES:
                per[variance] = cached(
                    ddir / f"{set_dir.name}-variance-{variance}.json",
                    {"fp": fp, "plan": asdict(p), "seed": cfg.seed, "v": variance},
                    partial(_one_variance, set_dir, p.data, settings, variance,
                            p.eval_samples, p.sample_n, ddir, cfg.seed, progress))
            result[f"{name}, trained {trained_with}"] = {
                "path": str(set_dir), "variances": per, "seconds": time.perf_counter() - t0}
    return result


def variance_section(comparison: dict[str, Any]) -> list[str]:
    """The report's markdown for :func:`compare_variances`."""
    lines = ["## Reverse variances (`--variance`), digits", "",
             "Held-out bits/dim (test split, ± one standard error) of the DP schedule and the "
             "even stride under each reverse variance, each DP chosen on the set's train-split "
             "table for that variance; `even - DP` is their paired difference. Every cell "
             "uses the same test examples and noise, so columns are paired too. analytic and "
             "mse are fitted on the train split (Gamma_t, m_t of the table's own pass).", ""]
    for set_name, s in comparison.items():
        per = s["variances"]
        names = list(per)
        lines += [f"### {set_name}", "",
                  "| K | schedule | " + " | ".join(f"{v} ({per[v]['variance']})" for v in names)
                  + " |", "|---|---|" + "---|" * len(names)]
        for i, row in enumerate(per[names[0]]["rows"]):
            for method in ("dp", "even", "even_minus_dp"):
                cells = []
                for v in names:
                    c = per[v]["rows"][i][method]
                    cells.append("n/a" if c["bpd"] is None
                                 else f"{c['bpd']:.3f} ± {c['se']:.3f}")
                label = method.replace("_minus_", " - ").replace("dp", "DP")
                lines.append(f"| {row['K']} | {label} | " + " | ".join(cells) + " |")
        clipped = {v: per[v]["clipped"] for v in names if per[v]["clipped"]}
        if clipped:
            lines += ["", "Clipped statistics (Gamma_t > 1 or non-finite; a badly fitted "
                      "network there): " + "; ".join(f"{v}: {len(c)} times t, first {c[0]}"
                                                     for v, c in clipped.items()) + "."]
        if all(per[v]["samples"] for v in names):
            first = per[names[0]]["samples"]["metrics"]
            lines += ["", f"Samples along dp:{VARIANCE_SAMPLE_BUDGET}:", "",
                      "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for j, m0 in enumerate(first):
                cells = []
                for v in names:
                    m = per[v]["samples"]["metrics"][j]
                    cells.append(f"{m['value']:.4g}" + (f" ± {m['se']:.2g}" if m["se"] else ""))
                lines.append(f"| {m0['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
