"""Evaluation-time variances (--variance): Analytic-DPM's analytic variance equals an
independent implementation of Bao et al. 2022's formulas, the mse variance is the
minimizer on the table it was fitted on, the full chain equals a direct T-step loop,
and bad statistics or tables are handled with one sentence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.variances import StepVariance
from ddpm_tools.costs.build import build_cost_table, cache_path, cached_cost_table
from ddpm_tools.costs.estimate import CostSettings, noise_for, select_examples, step_costs
from ddpm_tools.costs.table_file import CostTable, predicted_nats, read_cost_table, write_cost_table
from ddpm_tools.data import load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.models import split_output
from ddpm_tools.schedules.spec import CostSource, fit_variance
from ddpm_tools.sets import Denoiser, load_set

N, SEED = 48, 3


def _bao_reference(cset, x0, t_max=None):
    """Per (s, t) the expected KL under Analytic-DPM's variance, written from the paper
    (Bao et al. 2022, Theorem 1; the clip of their released code) with plain numpy
    alpha_bar and the network's raw eps output. Returns (L [T+1, T+1], gamma [T+1])."""
    man = cset.manifest
    assert man.prediction == "eps"
    b = man.schedule.betas
    ab = np.concatenate([[1.0], np.cumprod(1.0 - b[1:])])
    T = cset.T
    den = Denoiser(cset)
    n = x0.shape[0]
    D = int(np.prod(x0.shape[1:]))
    L = np.full((T + 1, T + 1), np.inf)
    gamma = np.zeros(T + 1)
    for t in range(1, (t_max or T) + 1):
        eps = noise_for(t, SEED, tuple(x0.shape))
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * eps
        eps_hat, _ = split_output(den.raw(xt, np.full(n, t)), x0.shape[1], man.variance)
        gamma[t] = float((eps_hat.reshape(n, -1) ** 2).sum(1).mean()) / D
        xh = (xt - math.sqrt(1 - ab[t]) * eps_hat) / math.sqrt(ab[t])
        if cset.clip_range is not None:
            xh = xh.clamp(-cset.clip_range, cset.clip_range)
        cov_x0 = min(max((1 - ab[t]) / ab[t] * (1 - gamma[t]), 0.0), 1.0)
        for s in range(t):
            skip_beta = 1 - ab[t] / ab[s]
            if s == 0:  # Theorem 1 at s = 0: the x0 covariance itself (if clipped to 0,
                # our documented fallback: the fixed_small decoder variance)
                var = cov_x0 if cov_x0 > 0 else (1 - ab[t]) * b[2] * (1 - ab[1]) / (
                    (1 - ab[2]) * b[1])
                assert man.data.levels is None
                nll = 0.5 * (math.log(2 * math.pi * var) + (x0 - xh) ** 2 / var)
                L[0, t] = float(nll.reshape(n, -1).sum(1).mean())
                continue
            tilde = skip_beta * (1 - ab[s]) / (1 - ab[t])
            var = tilde + ab[s] * skip_beta**2 / (1 - ab[t]) ** 2 * cov_x0
            c1 = skip_beta * math.sqrt(ab[s]) / (1 - ab[t])
            c2 = math.sqrt(ab[t] / ab[s]) * (1 - ab[s]) / (1 - ab[t])
            mu_q, mu_p = c1 * x0 + c2 * xt, c1 * xh + c2 * xt
            kl = 0.5 * (-1 + math.log(var / tilde) + tilde / var + (mu_q - mu_p) ** 2 / var)
            L[s, t] = float(kl.reshape(n, -1).sum(1).mean())
    return L, gamma


def _table(cset, variance, tmp_path, split="train"):
    data = load_data(cset.manifest.data.name, split, seed=0)
    return build_cost_table(cset, data, tmp_path / f"{variance}.safetensors",
                            CostSettings(samples=N, seed=SEED), variance=variance).table


def test_analytic_table_equals_bao_et_al_and_the_direct_full_chain(tiny_set_2d, tmp_path):
    cset = load_set(tiny_set_2d)
    table = _table(cset, "analytic", tmp_path)
    assert table.variance == "analytic" and table.has_stats
    x0 = select_examples(load_data("8gaussians", "train", seed=0), N, SEED)
    ref, gamma = _bao_reference(cset, x0)
    T = cset.T
    np.testing.assert_allclose(table.gamma[1:], gamma[1:], rtol=1e-10)
    used = np.triu(np.ones((T + 1, T + 1), bool), 1)
    np.testing.assert_allclose(table.L[used], ref[used], rtol=1e-8, atol=1e-10)
    # the full chain the table predicts equals the direct T-step loop with the same variances
    direct = sum(ref[t - 1, t] for t in range(1, T + 1)) + table.prior[T]
    assert predicted_nats(table, np.arange(T + 1)) == pytest.approx(direct, rel=1e-10)


def test_mse_variance_is_the_minimizer_on_its_table(tiny_set_2d, tmp_path):
    cset = load_set(tiny_set_2d)
    tabs = {v: _table(cset, v, tmp_path) for v in ("fixed_small", "fixed_large", "analytic",
                                                   "mse")}
    mse = tabs["mse"]
    T, D = cset.T, mse.dims
    s_idx, t_idx = np.triu_indices(T + 1, 1)
    keep = s_idx >= 1
    s_idx, t_idx = s_idx[keep], t_idx[keep]
    for v in ("fixed_small", "fixed_large", "analytic"):
        assert np.all(mse.L[s_idx, t_idx] <= tabs[v].L[s_idx, t_idx] * (1 + 1e-12) + 1e-12), v
    # the same statistics came from the same pass whatever the variance
    np.testing.assert_array_equal(mse.mse, tabs["fixed_small"].mse)
    # perturbing sigma^2 up or down raises the cost of the step (expected KL, eq. (8))
    ab = cset.schedule.alpha_bar
    for s, t in [(1, 2), (3, 9), (10, 20), (5, 6)]:
        bs = 1 - ab[t] / ab[s]
        tilde = bs * (1 - ab[s]) / (1 - ab[t])
        coef2 = ab[s] * bs**2 / (1 - ab[t]) ** 2

        def cost(var, s=s, t=t, tilde=tilde, coef2=coef2):
            return 0.5 * D * (math.log(var / tilde) + tilde / var - 1) \
                + coef2 * D * mse.mse[t] / (2 * var)

        best = tilde + coef2 * mse.mse[t]
        assert mse.L[s, t] == pytest.approx(cost(best), rel=1e-9)
        for f in (0.9, 0.99, 1.01, 1.1):
            assert cost(best * f) > mse.L[s, t]


def test_variance_decoders_depend_on_t_alone_and_mse_floor(tiny_set_digits):
    cset = load_set(tiny_set_digits)
    sch = cset.schedule
    T = cset.T
    gamma = np.full(T + 1, 0.5)
    mse = np.full(T + 1, 1e-30)
    small = StepVariance("fixed_small").decoder_log_var(sch, 3)
    assert StepVariance.fit("mse", sch, gamma, mse).decoder_log_var(sch, 3) == small
    ana = StepVariance.fit("analytic", sch, gamma, mse)
    want = math.log(min(max(math.expm1(-sch.log_alpha_bar[1]) * 0.5, 0), 1))
    assert ana.decoder_log_var(sch, 1) == pytest.approx(want, rel=1e-12)


def test_variance_names_resolve_against_the_sets_own():
    from ddpm_tools.core.variances import resolve_variance

    assert resolve_variance(None, "learned_range") == "learned_range"
    assert resolve_variance("trained", "fixed_large") == "fixed_large"
    assert resolve_variance("learned_range", "learned_range") == "learned_range"  # a file's
    assert resolve_variance("mse", "learned_range") == "mse"
    with pytest.raises(BadInputError, match="trained with fixed_small"):
        resolve_variance("learned_range", "fixed_small")
    with pytest.raises(BadInputError, match="unknown --variance"):
        resolve_variance("big", "fixed_small")


def test_bad_statistics_are_clipped_and_reported_never_nan(tiny_set_digits):
    cset = load_set(tiny_set_digits)
    sch, T = cset.schedule, cset.T
    gamma = np.full(T + 1, 0.9)
    gamma[3], gamma[5], gamma[7] = 1.5, np.nan, np.inf
    mse = np.full(T + 1, 0.01)
    mse[4], mse[6] = np.nan, np.inf
    ana = StepVariance.fit("analytic", sch, gamma, mse)
    assert ana.clipped == (3, 5, 7)
    m = StepVariance.fit("mse", sch, gamma, mse)
    assert m.clipped == (4, 6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.round((torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1) * 8) / 8
    xh = (torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1)
    for var in (ana, m):
        for t in range(1, T + 1):
            costs = step_costs(cset, t, np.arange(t), x0, xh, None, var)
            assert torch.isfinite(costs).all(), (var.kind, t)


def test_old_table_without_statistics_is_rebuilt_or_refused(tiny_set_2d, tmp_path):
    cset = load_set(tiny_set_2d)
    settings = CostSettings(samples=16, seed=SEED)
    table, path = cached_cost_table(cset, "8gaussians", "train", settings)
    assert table.has_stats and path == cache_path(cset, "8gaussians", "train", settings)
    old = CostTable(L=table.L, prior=table.prior, T=table.T, dims=table.dims,
                    variance=table.variance, set_sha256=table.set_sha256, split="train")
    write_cost_table(path, old)
    assert not read_cost_table(path).has_stats  # an old table still loads
    mse_table, mse_path = cached_cost_table(cset, "8gaussians", "train", settings,
                                            variance="mse")
    assert mse_table.has_stats and mse_path.name.endswith("-mse.safetensors")
    # an explicit old table is refused with the command that fixes it
    src = CostSource("8gaussians", settings, table=path, variance="trained")
    with pytest.raises(BadInputError, match="--variance analytic"):
        fit_variance(cset, CostSource("8gaussians", settings, table=path, variance="analytic"))
    assert fit_variance(cset, src).kind == "fixed_small"


def test_cli_optimize_eval_sample_with_variance(tiny_set_2d, tmp_path):
    r = CliRunner()
    base = ["--set", str(tiny_set_2d)]
    res = r.invoke(app, ["optimize-schedule", *base, "--data", "8gaussians", "--budget", "4",
                         "--samples", "32", "--variance", "mse", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    sched = tmp_path / "s" / "schedule_K4.json"
    assert json.loads(sched.read_text())["source"]["variance"] == "mse"
    ev = ["eval-bpd", *base, "--data", "8gaussians", "--samples", "24", "--table-samples", "32"]
    res = r.invoke(app, [*ev, "--schedule", str(sched), "--schedule", "even:4"])
    assert res.exit_code == 0, res.output
    assert "mse variance" in res.output
    res = r.invoke(app, [*ev, "--schedule", str(sched), "--variance", "analytic"])
    assert res.exit_code == 2 and "optimized for the mse variance" in res.output
    res = r.invoke(app, [*ev, "--schedule", "dp:4", "--variance", "analytic", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["variance"] == "analytic"
    out = tmp_path / "x.npz"
    res = r.invoke(app, ["sample", *base, "--schedule", str(sched), "--n", "8",
                         "--out", str(out), "--table-samples", "32"])
    assert res.exit_code == 0 and out.exists(), res.output
    res = r.invoke(app, ["sample", *base, "--schedule", "even:4", "--n", "8", "--eta", "0.5",
                         "--variance", "mse", "--out", str(out), "--table-samples", "32"])
    assert res.exit_code == 2 and "ancestral" in res.output
    res = r.invoke(app, ["cost-table", *base, "--data", "8gaussians", "--samples", "16",
                         "--variance", "bogus", "--out", str(tmp_path / "c.safetensors")])
    assert res.exit_code == 2 and "unknown --variance" in res.output


def test_v_prediction_gamma_and_shards_keep_the_statistics(tmp_path):
    """A v-prediction set: Gamma_t is the mean ||eps_hat||^2 / D with eps_hat from x0_hat;
    shards merged give the statistics of one run."""
    from conftest import make_trained_set

    from ddpm_tools.costs.build import Shard, merge_cost_tables
    from ddpm_tools.models import MLPConfig

    path = make_trained_set(tmp_path / "v", T=8, steps=10, prediction="v",
                            arch_config=MLPConfig(hidden=16, depth=1, time_dim=8))
    cset = load_set(path)
    data = load_data("8gaussians", "train", seed=0)
    s = CostSettings(samples=16, seed=SEED)
    whole = build_cost_table(cset, data, tmp_path / "w.safetensors", s, variance="mse").table
    x0 = select_examples(data, 16, SEED)
    ab = cset.schedule.alpha_bar
    den = Denoiser(cset)
    for t in (1, 4, 8):
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * noise_for(t, SEED, tuple(x0.shape))
        v = den.raw(xt, np.full(16, t))
        x0_hat = math.sqrt(ab[t]) * xt - math.sqrt(1 - ab[t]) * v  # Salimans & Ho 2022
        eps_hat = (xt - math.sqrt(ab[t]) * x0_hat) / math.sqrt(1 - ab[t])
        assert whole.gamma[t] == pytest.approx(float((eps_hat**2).mean()), rel=1e-9)
        assert whole.mse[t] == pytest.approx(float(((x0 - x0_hat) ** 2).mean()), rel=1e-9)
    parts = [tmp_path / f"p{i}.safetensors" for i in range(2)]
    for i, p in enumerate(parts):
        build_cost_table(cset, data, p, s, shard=Shard(i, 2), variance="mse")
    merged = merge_cost_tables(parts, tmp_path / "m.safetensors")
    for k in ("gamma", "gamma_se", "mse", "mse_se", "L"):
        np.testing.assert_array_equal(getattr(merged, k), getattr(whole, k))
    assert merged.variance == "mse"
