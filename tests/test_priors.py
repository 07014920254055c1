"""Auxiliary priors: EM and the flow, storage, the cost table's prior column, the DP's start
time (optimize-schedule --truncate), truncated sampling and eval, train-prior's CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.gaussian import prior_kl
from ddpm_tools.costs.build import build_cost_table, set_fingerprint
from ddpm_tools.costs.estimate import CostSettings, select_examples
from ddpm_tools.costs.table_file import predicted_nats
from ddpm_tools.data import load_data
from ddpm_tools.data.toy2d import GAUSS8_STD, gauss8_centers
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.priors import (
    AuxPrior,
    FitSettings,
    FlowConfig,
    GMMConfig,
    PriorInfo,
    fit_flow,
    fit_gmm,
    fit_prior,
    load_priors,
    neg_entropy_q,
    priors_dir,
    save_prior,
)
from ddpm_tools.priors.gmm import gmm_from_numpy
from ddpm_tools.sampling.ancestral import sample
from ddpm_tools.schedules.optimize import optimize_table
from ddpm_tools.schedules.schedule_file import Schedule, write_schedule
from ddpm_tools.sets import load_set

runner = CliRunner()
INFO = PriorInfo("manual", 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture
def set_copy(tiny_set_2d, tmp_path):
    """A private copy of the tiny 2-D set (priors are written into the set folder)."""
    return shutil.copytree(tiny_set_2d, tmp_path / "set")


@pytest.fixture(scope="module")
def good_set_2d(tmp_path_factory):
    """8gaussians, T = 20, one v-prediction MLP trained well enough that its reverse
    steps beat a crude prior (about 5 s)."""
    from conftest import make_trained_set

    from ddpm_tools.models import MLPConfig

    return make_trained_set(tmp_path_factory.mktemp("good") / "g8v", T=20, intervals=1,
                            steps=1000, batch_size=256, prediction="v",
                            arch_config=MLPConfig(hidden=64, depth=3, time_dim=32))


def standard_normal_prior(t: int) -> AuxPrior:
    gmm = gmm_from_numpy(np.zeros((1, 2)), np.eye(2)[None], np.ones(1), "full")
    return AuxPrior(t, GMMConfig(components=1), (2,), gmm, INFO)


def gauss8(n: int, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(load_data("8gaussians", "train", seed=seed).x[:n], dtype=torch.float64)


# ---------------------------------------------------------------- densities

@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_increases_the_objective_monotonically_and_finds_the_mixture(covariance):
    x = gauss8(4000)
    fit = fit_gmm(x, GMMConfig(components=8, covariance=covariance),
                  torch.Generator().manual_seed(1))
    h = np.array(fit.history)
    assert np.all(np.diff(h) >= -1e-10), np.diff(h).min()  # MAP-EM never goes down
    assert h[-1] > h[0] + 0.5 and fit.converged
    test = load_data("8gaussians", "test").x[:2000]
    from ddpm_tools.data import true_log_density

    ll = float(fit.model.log_prob(torch.as_tensor(test, dtype=torch.float64)).mean())
    true = float(true_log_density("8gaussians", test).mean())
    assert abs(ll - true) < 0.05  # the data is an 8-component mixture (isotropic)


def test_gmm_sampling_and_bad_configs():
    gmm = gmm_from_numpy(np.array([[0.0, 0.0], [10.0, 0.0]]), np.stack([np.eye(2)] * 2),
                         np.array([0.25, 0.75]), "full")
    s = gmm.sample(4000, torch.Generator().manual_seed(0))
    assert abs(float((s[:, 0] > 5).double().mean()) - 0.75) < 0.03
    with pytest.raises(BadInputError, match="components"):
        GMMConfig(components=0)
    with pytest.raises(BadInputError, match="covariance"):
        GMMConfig(covariance="spherical")
    with pytest.raises(BadInputError, match="more than 8"):
        fit_gmm(torch.zeros(5, 2), GMMConfig(), torch.Generator())


def test_flow_log_prob_integrates_to_one_and_inverts():
    g = torch.Generator().manual_seed(0)
    x = gauss8(3000) * 0.8 + 0.6 * torch.randn(3000, 2, generator=g, dtype=torch.float64)
    flow = fit_flow(x, FlowConfig(layers=4, hidden=32, steps=150, batch_size=256), g).model
    u = torch.linspace(-9.0, 9.0, 361, dtype=torch.float64)
    h = float(u[1] - u[0])
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    mass = float(torch.exp(flow.log_prob(grid)).sum()) * h * h
    assert abs(mass - 1.0) < 0.01, mass
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    back, _ = flow.to_base(flow.sample(50, torch.Generator().manual_seed(3)))
    assert torch.allclose(back, torch.randn(50, 2, generator=torch.Generator().manual_seed(3),
                                            dtype=torch.float64), atol=1e-9)
    assert flow.log_prob(z).shape == (50,)


# ---------------------------------------------------------------- storage

def test_priors_round_trip_and_checks(set_copy):
    cset = load_set(set_copy)
    fp0 = set_fingerprint(cset)
    prior = fit_prior(cset, load_data("8gaussians", "train"), 6, GMMConfig(components=4),
                      FitSettings(samples=2000))
    path = save_prior(cset, prior)
    assert path.parent == priors_dir(cset) == set_copy / "priors"
    assert set_fingerprint(cset) != fp0  # cached cost tables are rebuilt
    (loaded,) = load_priors(cset).values()
    x = torch.randn(7, 2, dtype=torch.float64)
    assert loaded.t == 6 and loaded.kind == "gmm" and loaded.info == prior.info
    assert torch.allclose(loaded.log_prob(x), prior.log_prob(x))
    assert prior.info.heldout_ll < prior.info.train_ll + 0.2 and prior.info.prior_nats > 0
    # refitting at the same t replaces the file; a flow at another t sits next to it
    save_prior(cset, fit_prior(cset, load_data("8gaussians", "train"), 6,
                               GMMConfig(components=2), FitSettings(samples=500)))
    save_prior(cset, fit_prior(cset, load_data("8gaussians", "train"), 12,
                               FlowConfig(layers=2, hidden=8, steps=20), FitSettings(samples=500)))
    assert sorted(load_priors(cset)) == [6, 12]
    assert len(list((set_copy / "priors").glob("*.safetensors"))) == 2
    f = next((set_copy / "priors").glob("prior_t12_*.safetensors"))
    f.write_bytes(f.read_bytes()[:-3] + b"xyz")
    with pytest.raises(CheckpointError, match="sha256.*train-prior --at 12"):
        load_priors(cset)
    index = json.loads((set_copy / "priors" / "priors.json").read_text())
    index["schedule_sha256"] = "0" * 64
    (set_copy / "priors" / "priors.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="another noise schedule"):
        load_priors(cset)


# ---------------------------------------------------------------- prior column, DP

def test_standard_normal_prior_cost_equals_the_closed_form_kl(set_copy):
    """p_aux = N(0, I) at t: E log q - E log p_aux is KL(q(x_t|x_0) || N(0, I))."""
    cset = load_set(set_copy)
    save_prior(cset, standard_normal_prior(8))
    n = 2000
    table = build_cost_table(cset, load_data("8gaussians", "train"),
                             set_copy / "c.safetensors", CostSettings(samples=n)).table
    x0 = select_examples(load_data("8gaussians", "train"), n, 0)
    kl = prior_kl(x0, float(cset.schedule.log_alpha_bar[8])).sum(1).mean()
    assert np.isfinite(table.prior).sum() == 2 and table.prior_se[8] > 0
    assert abs(table.prior[8] - float(kl)) < 4 * table.prior_se[8]


def test_a_mixture_prior_lowers_the_prior_term_where_q_is_far_from_gaussian(set_copy):
    cset = load_set(set_copy)
    t = 5  # alpha_bar ~ 0.87: eight separated modes
    data = load_data("8gaussians", "train")
    kw = {"settings": FitSettings(samples=8000)}
    mix = fit_prior(cset, data, t, GMMConfig(components=8), **kw).info
    one = fit_prior(cset, data, t, GMMConfig(components=1), **kw).info
    # the best possible p_aux is q(x_t) itself: for 8gaussians an 8-Gaussian mixture
    ab = float(np.exp(cset.schedule.log_alpha_bar[t]))
    var = ab * GAUSS8_STD**2 + 1 - ab
    q = gmm_from_numpy(math.sqrt(ab) * gauss8_centers(), np.full((8, 2), math.sqrt(var)),
                       np.full(8, 1 / 8), "diag")
    best = AuxPrior(t, GMMConfig(components=8, covariance="diag"), (2,), q, INFO)
    x0 = torch.as_tensor(data.x[:8000], dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    optimum = float(neg_entropy_q(cset.schedule, t, 2) - best.log_prob(x_t).mean())
    assert mix.prior_nats < one.prior_nats - 0.5
    assert abs(mix.prior_nats - optimum) < 0.05 + 3 * mix.prior_se


def test_dp_keeps_T_with_a_standard_normal_prior_and_truncation_never_hurts(good_set_2d,
                                                                           tmp_path):
    """N(0, I) below T is a poor model of q(x_t): with enough steps to cover the top of the
    chain the DP still starts at T. (At tiny budgets a crude prior can legitimately win:
    one fixed_small jump from T to t costs more than N(0, I) at t, as Franzese et al. find
    for short chains.)"""
    cset_dir = shutil.copytree(good_set_2d, tmp_path / "set")
    cset = load_set(cset_dir)
    for t in (5, 10):
        save_prior(cset, standard_normal_prior(t))
    table = build_cost_table(cset, load_data("8gaussians", "train"), tmp_path / "c.safetensors",
                             CostSettings(samples=1000)).table
    assert np.flatnonzero(np.isfinite(table.prior)).tolist() == [5, 10, 20]
    trunc = optimize_table(table, None, truncate=True).results
    plain = optimize_table(table, None).results
    for r, p in zip(trunc, plain, strict=True):
        assert r.schedule.predicted_bpd <= p.schedule.predicted_bpd + 1e-12
        assert r.untruncated_bpd == pytest.approx(p.schedule.predicted_bpd)
        assert p.start == 20  # default: untruncated, the optimum is unchanged
        if r.schedule.budget >= 8:
            assert r.start == 20, r.schedule.budget


# ---------------------------------------------------------------- sampling and eval

def test_truncated_sampling_and_eval_use_the_prior(set_copy):
    cset = load_set(set_copy)
    data = load_data("8gaussians", "train")
    save_prior(cset, fit_prior(cset, data, 10, GMMConfig(components=8),
                               FitSettings(samples=4000)))
    tau = np.array([0, 3, 6, 10])
    g = torch.Generator().manual_seed(0)
    x = sample(cset, tau, 500, generator=g)
    assert x.shape == (500, 2) and torch.isfinite(x).all()
    n = 1500
    table = build_cost_table(cset, data, set_copy / "c.safetensors",
                             CostSettings(samples=n, seed=2)).table
    (r,) = eval_bpd(cset, data, [("trunc", tau)], samples=n, seed=2)
    pred = predicted_nats(table, tau) / (2 * math.log(2))
    assert abs(r.bpd - pred) < 3 * math.sqrt(2) * r.bpd_se  # same examples, other noise
    assert r.prior_bpd == pytest.approx(table.prior[10] / (2 * math.log(2)), abs=0.1)
    with pytest.raises(BadInputError, match=r"starts at t = 7 < T = 20.*t = 10, 20"):
        sample(cset, np.array([0, 3, 7]), 5)


# ---------------------------------------------------------------- CLI

def test_train_prior_optimize_truncate_eval_and_sample_cli(set_copy, tmp_path):
    s = str(set_copy)
    res = runner.invoke(app, ["train-prior", "--set", s, "--data", "8gaussians", "--at", "6",
                              "--at", "12", "--components", "4", "--samples", "2000",
                              "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["t"] for r in rows] == [6, 12] and all(r["kind"] == "gmm" for r in rows)
    assert all(r["prior_bpd"] > 0 and r["heldout_ll"] < 0 for r in rows)
    res = runner.invoke(app, ["train-prior", "--set", s, "--data", "8gaussians", "--at", "9",
                              "--kind", "flow", "--flow-steps", "30", "--samples", "500"])
    assert res.exit_code == 0, res.output
    assert "prior cost" in res.output and "flow" in res.output
    res = runner.invoke(app, ["optimize-schedule", "--set", s, "--data", "8gaussians",
                              "--budget", "3", "--budget", "6", "--truncate", "--samples",
                              "200", "--out", str(tmp_path / "sch"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["schedules"]
    for r in out:
        assert r["start"] == r["timesteps"][-1] and r["start"] in (6, 9, 12, 20)
        assert r["predicted_bpd"] <= r["untruncated_bpd"] + 1e-12
        assert r["untruncated_timesteps"][-1] == 20
    res = runner.invoke(app, ["optimize-schedule", "--set", s, "--data", "8gaussians",
                              "--budget", "3", "--truncate", "--samples", "200"])
    assert res.exit_code == 0, res.output
    assert "start" in res.output and "from T" in res.output
    trunc = Schedule(20, 2, np.array([0, 4, 12]), None, "given")
    write_schedule(tmp_path / "t12.json", trunc)
    res = runner.invoke(app, ["eval-bpd", "--set", s, "--data", "8gaussians", "--schedule",
                              str(tmp_path / "t12.json"), "--schedule", "dp-truncated:3",
                              "--schedule", "dp:3", "--samples", "100", "--table-samples",
                              "200", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    assert ev[0]["timesteps"][-1] == 12 and ev[2]["timesteps"][-1] == 20
    res = runner.invoke(app, ["sample", "--set", s, "--schedule", str(tmp_path / "t12.json"),
                              "--n", "16", "--out", str(tmp_path / "s.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (16, 2)


@pytest.mark.parametrize("args, message", [
    ([], "at least one --at"),
    (["--at", "20"], "outside 1..19"),
    (["--at", "0"], "outside 1..19"),
    (["--at", "5", "--kind", "spline"], "unknown prior kind"),
    (["--at", "5", "--covariance", "tied"], "unknown covariance"),
])
def test_train_prior_bad_input_exits_2_with_one_sentence(set_copy, args, message):
    res = runner.invoke(app, ["train-prior", "--set", str(set_copy), "--data", "8gaussians",
                              *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (set_copy / "priors").exists()


def test_truncated_schedule_without_a_prior_exits_2_naming_the_starts(set_copy, tmp_path):
    write_schedule(tmp_path / "t7.json", Schedule(20, 2, np.array([0, 3, 7]), None, "given"))
    res = runner.invoke(app, ["eval-bpd", "--set", str(set_copy), "--data", "8gaussians",
                              "--schedule", str(tmp_path / "t7.json"), "--samples", "10"])
    assert res.exit_code == 2, res.output
    assert "starts at t = 7 < T = 20" in res.output and "t = 20" in res.output
