"""Cost tables: the full chain equals a direct T-step ELBO, closed forms equal brute force,
the DP beats the strides, shards and resume reproduce one run, the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ddpm_tools.costs.build as ct
from ddpm_tools.cli.main import app
from ddpm_tools.core.dp import solve_schedules
from ddpm_tools.core.strides import even_stride, quadratic_stride
from ddpm_tools.costs.build import Shard, build_cost_table, merge_cost_tables
from ddpm_tools.costs.estimate import CostSettings, noise_for, select_examples, step_costs
from ddpm_tools.costs.table_file import predicted_nats, read_cost_table
from ddpm_tools.data import load_data
from ddpm_tools.sets import Denoiser, load_set
from ddpm_tools.sets.manifest import with_member, write_manifest


def _direct_full_chain(cset, data, n, seed):
    """Per-t one-step terms written out with DDPM's one-step formulas (Ho et al. 2020,
    eqs. (5)-(7); improved-diffusion's clipped log variance at t = 1)."""
    man = cset.manifest
    b = man.schedule.betas
    ab = man.schedule.alpha_bar
    x0 = select_examples(data, n, seed)
    den = Denoiser(cset)
    D = int(np.prod(x0.shape[1:]))
    terms = []
    for t in range(1, cset.T + 1):
        eps = noise_for(t, seed, tuple(x0.shape))
        xt = math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * eps
        out = den(xt, np.full(len(x0), t))
        xh, v = out.x0_hat, out.v
        post_var_2 = b[2] * (1 - ab[1]) / (1 - ab[2])
        if t == 1:
            small, large = math.log(post_var_2), math.log(b[1])
            lv = {"fixed_small": small, "fixed_large": large}.get(man.variance)
            if lv is None:
                lv = v * large + (1 - v) * small
            lv = torch.as_tensor(lv, dtype=torch.float64) * torch.ones_like(x0)
            if man.data.levels is None:
                nll = 0.5 * (math.log(2 * math.pi) + lv + (x0 - xh) ** 2 / lv.exp())
            else:
                h = 1.0 / (man.data.levels - 1)
                sd = (0.5 * lv).exp()
                cdf = torch.special.ndtr
                up = torch.where(x0 > 1 - h / 2, torch.ones_like(x0), cdf((x0 + h - xh) / sd))
                lo = torch.where(x0 < -1 + h / 2, torch.zeros_like(x0), cdf((x0 - h - xh) / sd))
                nll = -torch.log(up - lo)
            terms.append(nll.reshape(len(x0), -1).sum(1).mean().item())
            continue
        c1 = b[t] * math.sqrt(ab[t - 1]) / (1 - ab[t])
        c2 = (1 - ab[t - 1]) * math.sqrt(1 - b[t]) / (1 - ab[t])
        var = b[t] * (1 - ab[t - 1]) / (1 - ab[t])
        mu_q, mu_p = c1 * x0 + c2 * xt, c1 * xh + c2 * xt
        if man.variance == "fixed_small":
            lvp = torch.full_like(x0, math.log(var))
        elif man.variance == "fixed_large":
            lvp = torch.full_like(x0, math.log(b[t]))
        else:
            lvp = v * math.log(b[t]) + (1 - v) * math.log(var)
        kl = 0.5 * (-1 + lvp - math.log(var) + var / lvp.exp() + (mu_q - mu_p) ** 2 / lvp.exp())
        terms.append(kl.reshape(len(x0), -1).sum(1).mean().item())
    prior = 0.5 * (-1 - math.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * x0**2)
    return np.array(terms), prior.reshape(len(x0), -1).sum(1).mean().item(), D


@pytest.mark.parametrize("fixture", ["tiny_set_2d", "tiny_set_digits"])
def test_full_chain_of_table_equals_direct_T_step_elbo(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    cset = load_set(path)
    data = load_data(cset.manifest.data.name, "train", seed=0)
    run = build_cost_table(cset, data, tmp_path / "c.safetensors",
                           CostSettings(samples=64, seed=5))
    L = run.table.L
    terms, prior, D = _direct_full_chain(cset, data, 64, 5)
    t = np.arange(1, cset.T + 1)
    np.testing.assert_allclose(L[t - 1, t], terms, rtol=1e-7, atol=1e-9)
    assert run.table.prior[cset.T] == pytest.approx(prior, rel=1e-9)
    full = predicted_nats(run.table, np.arange(cset.T + 1))
    assert full == pytest.approx(terms.sum() + prior, rel=1e-9)
    assert run.table.dims == D and np.all(np.isinf(run.table.prior[:-1]))
    se = run.table.L_se[np.triu(np.ones_like(L, bool), 1)]  # every step t -> s < t
    assert np.all(np.isfinite(se)) and np.all(se > 0)  # measured, from 64 different examples


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_closed_form_columns_equal_per_dimension_kl(variance, tiny_set_digits, tmp_path):
    """The O(T) closed form (fixed) and the chunked path (learned) equal a plain
    per-dimension Gaussian KL for every s < t."""
    cset = load_set(tiny_set_digits)
    man = cset.manifest
    if variance != man.variance:
        from dataclasses import replace
        cset.manifest = replace(man, variance=variance)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    xh = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    v = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    t = 17
    got = step_costs(cset, t, np.arange(t), x0, xh, v)
    from ddpm_tools.core.diffusion import posterior_coeffs
    from ddpm_tools.core.gaussian import normal_kl
    for s in range(1, t):
        c = posterior_coeffs(man.schedule, s, t)
        lv = {"fixed_small": math.log(c.beta_tilde), "fixed_large": math.log(c.beta)}.get(
            variance, None)
        lvp = v * math.log(c.beta) + (1 - v) * math.log(c.beta_tilde) if lv is None else lv
        xt = torch.zeros_like(x0)
        ref = normal_kl(c.coef_x0 * x0 + c.coef_xt * xt, math.log(c.beta_tilde),
                        c.coef_x0 * xh + c.coef_xt * xt, lvp).reshape(5, -1).sum(1)
        torch.testing.assert_close(got[:, s], ref, rtol=1e-10, atol=1e-10)


def test_dp_beats_strides_on_a_trained_table(tiny_set_2d, tmp_path):
    cset = load_set(tiny_set_2d)
    run = build_cost_table(cset, load_data("8gaussians", "train"), tmp_path / "c.safetensors",
                           CostSettings(samples=128))
    T = cset.T
    sols = solve_schedules(run.table.L, run.table.prior, list(range(1, T + 1)))
    for sol in sols:
        K = sol.budget
        assert sol.cost_nats <= predicted_nats(run.table, even_stride(T, K)) + 1e-9
        assert sol.cost_nats <= predicted_nats(run.table, quadratic_stride(T, K)) + 1e-9
        assert sol.cost_nats == pytest.approx(predicted_nats(run.table, sol.timesteps))


def test_shards_merge_to_the_single_run_and_resume_continues(tiny_set_2d, tmp_path,
                                                              monkeypatch):
    cset = load_set(tiny_set_2d)
    data = load_data("8gaussians", "train")
    s = CostSettings(samples=32, seed=1)
    whole = build_cost_table(cset, data, tmp_path / "whole.safetensors", s).table
    parts = [tmp_path / f"part{i}.safetensors" for i in range(3)]
    for i, p in enumerate(parts):
        build_cost_table(cset, data, p, s, shard=Shard(i, 3))
    with pytest.raises(Exception, match="do not cover t = 2"):
        merge_cost_tables(parts[:1] + parts[2:], tmp_path / "m.safetensors")
    merged = merge_cost_tables(parts, tmp_path / "merged.safetensors")
    np.testing.assert_array_equal(merged.L, whole.L)
    np.testing.assert_array_equal(merged.L_se, whole.L_se)
    # an interrupted run leaves a partial file; --resume computes only the missing columns
    monkeypatch.setattr(ct, "PARTIAL_EVERY_SECONDS", 0.0)
    monkeypatch.setattr("ddpm_tools.costs.estimate.FLUSH_SECONDS", 0.0)  # every column
    calls = {"n": 0}
    real = ct.compute_columns

    def interrupted(*a, **k):
        orig = k["checkpoint"]

        def ck(cols):
            orig(cols)
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt
        k["checkpoint"] = ck
        return real(*a, **k)

    monkeypatch.setattr(ct, "compute_columns", interrupted)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        build_cost_table(cset, data, out, s)
    assert not out.exists() and (tmp_path / "resumed.safetensors.partial").exists()
    monkeypatch.setattr(ct, "compute_columns", real)
    seen = []
    run = build_cost_table(cset, data, out, s, resume=True,
                           progress=lambda task, done, total, **kw: seen.append(total))
    assert seen and seen[-1] == cset.T - 7  # only the missing columns
    np.testing.assert_array_equal(run.table.L, whole.L)
    assert not (tmp_path / "resumed.safetensors.partial").exists()


def test_cost_table_cli_end_to_end_and_bad_input(tiny_set_2d, tmp_path):
    runner = CliRunner()
    out = tmp_path / "costs.safetensors"
    res = runner.invoke(app, ["cost-table", "--set", str(tiny_set_2d), "--data", "8gaussians",
                              "--samples", "64", "--out", str(out), "--device", "cpu",
                              "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    table = read_cost_table(out)
    assert table.T == info["T"] == 20 and table.n_samples == 64 and table.split == "train"
    assert info["full_chain_bpd"] == pytest.approx(
        predicted_nats(table, np.arange(21)) / (2 * math.log(2)))
    res = runner.invoke(app, ["optimize-schedule", "--costs", str(out), "--budget", "4",
                              "--json"])
    assert res.exit_code == 0, res.output
    sched = json.loads(res.stdout)["schedules"][0]
    assert sched["predicted_bpd"] <= sched["even_bpd"]
    for args, msg in [
        (["--data", "8gaussians", "--out", str(out)], "needs --set"),
        (["--set", str(tmp_path / "nope"), "--data", "8gaussians", "--out", str(out)],
         "does not exist"),
        (["--set", str(tiny_set_2d), "--data", "digits", "--out", str(out)], "shape"),
        (["--set", str(tiny_set_2d), "--data", "8gaussians", "--out", str(out),
          "--shard", "3/2"], "--shard"),
    ]:
        res = runner.invoke(app, ["cost-table", *args])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert "Traceback" not in res.output


def test_cached_table_is_rebuilt_when_weights_change(tiny_set_2d, tmp_path):
    import shutil
    p = tmp_path / "set"
    shutil.copytree(tiny_set_2d, p)
    s = CostSettings(samples=16)
    t1, path = ct.cached_cost_table(load_set(p), "8gaussians", settings=s)
    mtime = path.stat().st_mtime_ns
    t2, _ = ct.cached_cost_table(load_set(p), "8gaussians", settings=s)
    assert path.stat().st_mtime_ns == mtime and np.array_equal(t1.L, t2.L)  # reused
    cset = load_set(p)
    net = cset.load_member(0)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.01)
    from safetensors.torch import save_file

    from ddpm_tools.io.files import sha256_file
    save_file(net.state_dict(), str(p / cset.manifest.members[0].weights))
    write_manifest(p, with_member(cset.manifest, 0,
                                  sha256=sha256_file(p / cset.manifest.members[0].weights)))
    t3, _ = ct.cached_cost_table(load_set(p), "8gaussians", settings=s)
    assert t3.set_sha256 != t1.set_sha256 and not np.array_equal(t3.L, t1.L)
