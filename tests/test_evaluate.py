"""eval-bpd agrees with the cost table, with improved-diffusion's respaced terms and with a
plain T-step loop; sample draws reproducible samples in the data's levels."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.strides import even_stride
from ddpm_tools.costs.build import build_cost_table
from ddpm_tools.costs.estimate import (
    EVAL_STREAM,
    CostSettings,
    noise_for,
    select_examples,
    step_costs,
)
from ddpm_tools.costs.table_file import predicted_nats
from ddpm_tools.data import load_data
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.schedules.schedule_file import Schedule, write_schedule
from ddpm_tools.sets import Denoiser, load_set


def test_eval_matches_the_table_prediction_on_the_same_split(tiny_set_2d, tmp_path):
    cset = load_set(tiny_set_2d)
    data = load_data("8gaussians", "test")
    n = 3000
    table = build_cost_table(cset, data, tmp_path / "c.safetensors",
                             CostSettings(samples=n, seed=4)).table
    scheds = [("full", np.arange(21)), ("even:5", even_stride(20, 5)),
              ("given", np.array([0, 3, 9, 20]))]
    res = eval_bpd(cset, data, scheds, samples=n, seed=4)
    to_bpd = 1 / (2 * math.log(2))
    for r, (_, tau) in zip(res, scheds, strict=True):
        pred = predicted_nats(table, tau) * to_bpd
        # two estimates of one expectation on the same examples, independent noise:
        # the difference has standard error <= sqrt(2) * se
        assert abs(r.bpd - pred) < 3 * math.sqrt(2) * r.bpd_se, (r.label, r.bpd, pred)
        assert r.bpd == pytest.approx(r.prior_bpd + r.steps_bpd + r.decoder_bpd)
        assert r.n == n and r.bpd_se > 0


def _spaced_diffusion_kl(betas_full, use_timesteps, i, x0, xt, x0_hat, v, variance):
    """improved-diffusion's SpacedDiffusion term at respaced index i (>= 1), in nats,
    written out from its formulas: new betas from the kept alphas_cumprod, the
    posterior coefficients of GaussianDiffusion, the clipped log variance."""
    ac_full = np.cumprod(1.0 - betas_full)
    last, new_betas = 1.0, []
    for j, a in enumerate(ac_full):
        if j in use_timesteps:
            new_betas.append(1 - a / last)
            last = a
    nb = np.array(new_betas)
    ac = np.cumprod(1 - nb)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = nb * (1 - ac_prev) / (1 - ac)
    post_log_var_clipped = np.log(np.append(post_var[1], post_var[1:]))
    c1 = nb * np.sqrt(ac_prev) / (1 - ac)
    c2 = (1 - ac_prev) * np.sqrt(1 - nb) / (1 - ac)
    true_mean = c1[i] * x0 + c2[i] * xt
    true_lv = post_log_var_clipped[i]
    model_mean = c1[i] * x0_hat + c2[i] * xt
    if variance == "fixed_small":
        model_lv = np.full_like(x0, post_log_var_clipped[i])
    elif variance == "fixed_large":
        model_lv = np.full_like(x0, np.log(np.append(post_var[1], nb[1:]))[i])
    else:
        model_lv = v * np.log(nb[i]) + (1 - v) * post_log_var_clipped[i]
    kl = 0.5 * (-1.0 + model_lv - true_lv + np.exp(true_lv - model_lv)
                + (true_mean - model_mean) ** 2 * np.exp(-model_lv))
    return kl.reshape(len(x0), -1).sum(1)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_step_terms_equal_improved_diffusion_spaced_terms(variance, tiny_set_digits):
    cset = load_set(tiny_set_digits)
    cset.manifest = replace(cset.manifest, variance=variance)
    sch = cset.manifest.schedule
    tau = [0, 2, 5, 11, 12, 19, 24]  # ours: 1-based times; improved-diffusion: t - 1
    use = {t - 1 for t in tau[1:]}
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    xh = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    v = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    xt = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    for i in range(2, len(tau)):  # respaced index i - 1 >= 1
        s, t = tau[i - 1], tau[i]
        ours = step_costs(cset, t, np.array([s]), x0, xh, v)[:, 0].numpy()
        ref = _spaced_diffusion_kl(sch.betas[1:], use, i - 1, x0.numpy(), xt.numpy(),
                                   xh.numpy(), v.numpy(), variance)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_full_chain_total_equals_a_plain_T_step_loop(tiny_set_digits):
    cset = load_set(tiny_set_digits)
    data = load_data("digits", "test")
    n, seed, T = 40, 2, cset.T
    res = eval_bpd(cset, data, [("full", np.arange(T + 1))], samples=n, seed=seed)[0]
    x0 = select_examples(data, n, seed)
    den = Denoiser(cset)
    ab = cset.manifest.schedule.alpha_bar
    total = torch.zeros(n, dtype=torch.float64)
    for t in range(1, T + 1):  # plain loop, one call per t, the eval's noise stream
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * noise_for(t, seed, tuple(x0.shape),
                                                                       stream=EVAL_STREAM)
        out = den(xt, np.full(n, t))
        total += step_costs(cset, t, np.array([t - 1]), x0, out.x0_hat, out.v)[:, 0]
    total += (0.5 * (-1 - math.log(1 - ab[T]) + (1 - ab[T]) + ab[T] * x0**2)).reshape(
        n, -1).sum(1)
    bpd = (total / (64 * math.log(2))).numpy()
    assert res.bpd == pytest.approx(bpd.mean(), rel=1e-10)
    assert res.bpd_se == pytest.approx(bpd.std(ddof=1) / math.sqrt(n), rel=1e-8)


def test_eval_bpd_cli_side_by_side_paired_and_bad_input(tiny_set_2d, tmp_path):
    runner = CliRunner()
    sched = tmp_path / "s.json"
    write_schedule(sched, Schedule(20, 3, np.array([0, 4, 12, 20]), None, "given", {}))
    res = runner.invoke(app, ["eval-bpd", "--set", str(tiny_set_2d), "--data", "8gaussians",
                              "--schedule", "even:4", "--schedule", "even:4", "--schedule",
                              str(sched), "--schedule", "dp:4", "--samples", "200",
                              "--table-samples", "64", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["schedule"] for r in rows] == ["even:4", "even:4", "s.json", "dp:4"]
    assert rows[1]["bpd"] == rows[0]["bpd"] and rows[1]["diff_se"] == 0.0  # same noise
    assert all(r["n"] == 200 and r["bpd_se"] > 0 for r in rows)
    assert rows[3]["budget"] == 4 and rows[3]["timesteps"][-1] == 20
    bad_T = tmp_path / "bad.json"
    write_schedule(bad_T, Schedule(30, 2, np.array([0, 10, 30]), None, "given", {}))
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"T": 20, "budget": 2, "timesteps": [0, 12, 5, 20],
                               "predicted_bpd": None, "method": "given", "source": {}}))
    for spec, msg in [(str(bad_T), "T = 30"), ("even:0", "budget"), ("even:21", "budget"),
                      ("nonsense", "neither a file"), (str(raw), "increas")]:
        res = runner.invoke(app, ["eval-bpd", "--set", str(tiny_set_2d), "--data",
                                  "8gaussians", "--schedule", spec])
        assert res.exit_code == 2 and msg in res.output, (spec, res.output)


def test_sample_cli_levels_grid_reproducible_and_ddim(tiny_set_digits, tmp_path):
    runner = CliRunner()
    base = ["sample", "--set", str(tiny_set_digits), "--schedule", "even:6", "--n", "9"]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "a.npz"), "--grid",
                                     str(tmp_path / "a.png"), "--json"])
    assert res.exit_code == 0, res.output
    a = np.load(tmp_path / "a.npz")
    assert a["samples"].dtype == np.uint8 and a["samples"].shape == (9, 1, 8, 8)
    assert a["samples"].max() <= 16 and int(a["levels"]) == 17 and str(a["data"]) == "digits"
    from ddpm_tools.io.png import read_png
    assert read_png(tmp_path / "a.png").ndim == 2
    assert runner.invoke(app, base + ["--out", str(tmp_path / "b.npz")]).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "b.npz")["samples"], a["samples"])
    res = runner.invoke(app, base + ["--out", str(tmp_path / "c.npz"), "--seed", "1"])
    assert res.exit_code == 0
    assert not np.array_equal(np.load(tmp_path / "c.npz")["samples"], a["samples"])
    # DDIM (eta = 0) is deterministic given x_T: two noise seeds for the steps, same x_T
    from ddpm_tools.sampling.ancestral import sample
    cset = load_set(tiny_set_digits)
    xT = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    tau = even_stride(cset.T, 5)
    d1 = sample(cset, tau, 3, eta=0.0, generator=torch.Generator().manual_seed(1), x_T=xT)
    d2 = sample(cset, tau, 3, eta=0.0, generator=torch.Generator().manual_seed(2), x_T=xT)
    assert torch.equal(d1, d2)
    s1 = sample(cset, tau, 3, eta=1.0, generator=torch.Generator().manual_seed(1), x_T=xT)
    assert not torch.equal(d1, s1)
    res = runner.invoke(app, base + ["--out", str(tmp_path / "d.npz"), "--eta", "1.5"])
    assert res.exit_code == 2


def test_sample_2d_scatter(tiny_set_2d, tmp_path):
    res = CliRunner().invoke(app, ["sample", "--set", str(tiny_set_2d), "--schedule", "full",
                                   "--n", "50", "--out", str(tmp_path / "s.npz"), "--grid",
                                   str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    s = np.load(tmp_path / "s.npz")["samples"]
    assert s.shape == (50, 2) and s.dtype == np.float32 and np.isfinite(s).all()
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
