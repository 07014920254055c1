"""``ddpm-tools demo``: the whole idea, end to end, on the built-in data.

For each data set (digits, 8gaussians): train a 4-interval set and a single-network
baseline with equal steps per network, fit each set's cost table on the train split,
find DP schedules for K in {4, ..., 256}, score DP / even / quadratic / full chain on
the test split (bits/dim with standard errors), draw samples and score them. Every
stage is cached under ``out`` (trained members, tables, JSON results), so a rerun
reuses what is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_tools.core.dp import solve_schedules
from ddpm_tools.core.strides import even_stride, quadratic_stride
from ddpm_tools.costs.build import cached_cost_table, set_fingerprint
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import CostTable, predicted_bpd
from ddpm_tools.data import load_data
from ddpm_tools.io.files import atomic_write_json, ensure_writable_dir
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.metrics.evaluate_samples import evaluate_samples
from ddpm_tools.models import MLPConfig
from ddpm_tools.progress import ProgressFn
from ddpm_tools.sampling.sample_file import draw_samples
from ddpm_tools.schedules.optimize import standard_prior
from ddpm_tools.sets import load_set
from ddpm_tools.training.api import train
from ddpm_tools.training.config import TrainConfig
from ddpm_tools.training.create import SetSpec

BUDGETS = (4, 8, 16, 32, 64, 128, 256)  # K compared in the report
SAMPLE_BUDGET = 32  # K of the DP schedule used to draw samples


@dataclass(frozen=True)
class DataPlan:
    """What the demo does on one data set."""

    data: str  # built-in data name
    T: int  # diffusion steps
    schedule: str  # noise schedule
    variance: str  # variance type of both sets
    hidden: int  # MLP width (every network of both sets)
    steps: int  # training steps per network (equal for members and the baseline)
    eval_samples: int  # test examples scored by eval-bpd
    sample_n: int  # samples drawn per schedule for the sample-quality scores
    table_samples: int  # train examples behind each cost table (the DP's input)


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; ``quick`` scales everything down (CI, a first look)."""

    quick: bool = False  # small steps and samples: about 3 minutes on 2 cores
    seed: int = 0  # every stage's seed
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # training processes

    def plans(self) -> list[DataPlan]:
        # digits: T = 500 keeps the learned_range table's T^2 * D work small on a CPU;
        # 8gaussians: D = 2, so many table examples are cheap and tame the DP's selection
        # bias (a schedule chosen on a noisy table looks better on it than on test data)
        if self.quick:
            return [DataPlan("digits", 500, "linear", "learned_range", 256, 500, 200, 256, 128),
                    DataPlan("8gaussians", 1000, "linear", "learned_range", 128, 400, 500, 500,
                             1000)]
        return [DataPlan("digits", 500, "linear", "learned_range", 256, 4000, 360, 1000, 512),
                DataPlan("8gaussians", 1000, "linear", "learned_range", 128, 3000, 2000, 2000,
                         4000)]


def _cached(path: Path, key: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """JSON result stored with its key; recomputed when the key changes."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("key") == digest:
                return old["value"]
        except (json.JSONDecodeError, OSError):
            pass
    value = compute()
    atomic_write_json(path, {"key": digest, "value": value})
    return value


def _strides(T: int, K: int) -> dict[str, np.ndarray]:
    return {"even": even_stride(T, K), "quadratic": quadratic_stride(T, K)}


def _predictions(table: CostTable, budgets: list[int]) -> dict[str, Any]:
    """DP schedules and predicted bits/dim (train-split table) for each budget."""
    sols = solve_schedules(table.L, standard_prior(table.prior), budgets)  # chains from T
    rows = []
    for sol in sols:
        K = sol.budget
        st = _strides(table.T, K)
        rows.append({"K": K, "dp_timesteps": sol.timesteps.tolist(),
                     "dp_pred": predicted_bpd(table, sol.timesteps),
                     "even_pred": predicted_bpd(table, st["even"]),
                     "quadratic_pred": predicted_bpd(table, st["quadratic"])})
    return {"full_pred": predicted_bpd(table, np.arange(table.T + 1)), "rows": rows}


def _measure(set_dir: Path, plan: DataPlan, pred: dict[str, Any], seed: int,
             progress: ProgressFn | None) -> dict[str, Any]:
    """eval-bpd on the test split for full / DP / even / quadratic at every K, paired."""
    cset = load_set(set_dir)
    scheds: list[tuple[str, np.ndarray]] = [("full", np.arange(cset.T + 1))]
    for row in pred["rows"]:
        K = row["K"]
        scheds.append((f"dp:{K}", np.array(row["dp_timesteps"])))
        for name, tau in _strides(cset.T, K).items():
            scheds.append((f"{name}:{K}", tau))
    res = eval_bpd(cset, load_data(plan.data, "test", seed=seed), scheds,
                   samples=plan.eval_samples, seed=seed, progress=progress)
    return {r.label: {"bpd": r.bpd, "se": r.bpd_se, "prior": r.prior_bpd,
                      "steps": r.steps_bpd, "decoder": r.decoder_bpd, "n": r.n,
                      "diff_vs_full": r.diff_bpd, "diff_se": r.diff_se} for r in res}


def _sample_and_score(set_dir: Path, out: Path, plan: DataPlan, label: str,
                      tau: np.ndarray, seed: int, progress: ProgressFn | None
                      ) -> dict[str, Any]:
    cset = load_set(set_dir)
    npz = out / f"samples-{set_dir.name}-{label.replace(':', '')}.npz"
    png = out / f"samples-{set_dir.name}-{label.replace(':', '')}.png"
    draw_samples(cset, label, tau, plan.sample_n, npz, grid=None, seed=seed,
                 progress=progress)
    from ddpm_tools.sampling.sample_file import write_picture
    s = np.load(npz)["samples"]
    write_picture(png, s[:64] if cset.manifest.data.levels else s, cset.manifest.data.levels,
                  title=f"{set_dir.name}, {label}")
    rep = evaluate_samples(npz, plan.data, "test", seed=seed)
    return {"png": png.name, "npz": npz.name, "n": rep.n_samples,
            "metrics": [{"name": m.name, "value": m.value, "se": m.se, "meaning": m.meaning}
                        for m in rep.metrics],
            "classifier_accuracy": rep.classifier_accuracy,
            "classifier_sha256": rep.classifier_sha256}


def run_plan(plan: DataPlan, cfg: DemoConfig, out: Path,
             progress: ProgressFn | None = None) -> dict[str, Any]:
    """Everything the report shows for one data set (cached stage by stage)."""
    result: dict[str, Any] = {"plan": asdict(plan), "sets": {}}
    budgets = [K for K in BUDGETS if K <= plan.T]
    ddir = out / plan.data
    ensure_writable_dir(ddir)
    for name, intervals in (("4-interval", 4), ("single", 1)):
        set_dir = out / "sets" / f"{plan.data}-{'4int' if intervals == 4 else 'single'}"
        t0 = time.perf_counter()
        spec = SetSpec(intervals=intervals, partition="uniform", arch="mlp",
                       schedule=plan.schedule, T=plan.T, variance=plan.variance)
        tcfg = TrainConfig(steps=plan.steps, batch_size=128, lr=1e-3, ema=0.999,
                           checkpoint_every=max(100, plan.steps // 4), seed=cfg.seed)
        rep = train(set_dir, plan.data, spec, tcfg, workers=cfg.workers,
                    arch_config=MLPConfig(hidden=plan.hidden, depth=3), progress=progress)
        cset = load_set(set_dir)
        fp = set_fingerprint(cset)
        settings = CostSettings(samples=plan.table_samples, seed=cfg.seed)
        table, table_path = cached_cost_table(cset, plan.data, "train", settings,
                                              progress=progress)
        pred = _cached(ddir / f"{set_dir.name}-pred.json", {"fp": fp, "b": budgets,
                       "s": asdict(settings)}, partial(_predictions, table, budgets))
        meas = _cached(ddir / f"{set_dir.name}-eval.json",
                       {"fp": fp, "pred": pred, "plan": asdict(plan), "seed": cfg.seed},
                       partial(_measure, set_dir, plan, pred, cfg.seed, progress))
        dp_row = next(r for r in pred["rows"] if r["K"] == min(SAMPLE_BUDGET, plan.T))
        samples = {}
        for label, tau in ((f"dp:{dp_row['K']}", np.array(dp_row["dp_timesteps"])),
                           (f"even:{dp_row['K']}", even_stride(plan.T, dp_row["K"])),
                           ("full", np.arange(plan.T + 1))):
            samples[label] = _cached(
                ddir / f"{set_dir.name}-samples-{label.replace(':', '')}.json",
                {"fp": fp, "tau": tau.tolist(), "plan": asdict(plan), "seed": cfg.seed},
                partial(_sample_and_score, set_dir, ddir, plan, label, tau, cfg.seed,
                        progress))
        result["sets"][name] = {
            "path": str(set_dir), "members": [
                {"index": m.index, "t_lo": m.t_lo, "t_hi": m.t_hi,
                 "steps": m.state.steps_done, "final_loss": m.state.final_loss,
                 "seconds": m.state.seconds} for m in cset.manifest.members],
            "train_seconds_this_run": sum(r.seconds for r in rep.results if not r.skipped),
            "table": str(table_path), "pred": pred, "measured": meas, "samples": samples,
            "seconds": time.perf_counter() - t0}
    return result
