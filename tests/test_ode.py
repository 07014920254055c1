"""The probability-flow ODE likelihood: closed form for a network that predicts eps = 0,
exact divergence against Hutchinson's, dequantization, eval-bpd --method ode, and (slow)
agreement with the true density of 8gaussians."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.costs.estimate import select_examples
from ddpm_tools.data import load_data, true_log_density
from ddpm_tools.errors import BadInputError
from ddpm_tools.likelihood.elbo import eval_bpd
from ddpm_tools.likelihood.ode import ODESettings, ProbabilityFlow, divergence, eval_ode, ode_nll
from ddpm_tools.sets import load_set

runner = CliRunner()


def zero_eps_set(out, data: str):
    """A one-member set whose MLP predicts eps = 0 everywhere (its output layer is zero)."""
    from ddpm_tools.models import MLPConfig
    from ddpm_tools.sets.checkpoint_set import build_member
    from ddpm_tools.sets.manifest import update_manifest, with_member
    from ddpm_tools.training.config import TrainConfig
    from ddpm_tools.training.create import SetSpec, build_manifest, create_set
    from ddpm_tools.training.trainer import write_weights

    spec = SetSpec(intervals=1, T=20, schedule="cosine", prediction="eps")
    man = create_set(out, build_manifest(spec, load_data(data, "train"), TrainConfig(steps=1),
                                         arch_config=MLPConfig(hidden=8, depth=1, time_dim=8)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_member(man, man.members[0])
    digest = write_weights(out / man.members[0].weights, net.state_dict(), {})
    update_manifest(out, lambda m: with_member(m, 0, sha256=digest))
    return load_set(out)


def closed_form_nll(cset, y: torch.Tensor) -> torch.Tensor:
    """With eps_hat = 0 the flow is dx/dtau = -b x / 2: x(T) = sqrt(r) x(1) and
    int div f = (D/2) log r with r = alpha_bar_T / alpha_bar_1, so p = N(0, I / r)."""
    lab = cset.schedule.log_alpha_bar
    log_r = float(lab[-1] - lab[1])
    flat = y.reshape(y.shape[0], -1)
    d = flat.shape[1]
    log_p = -0.5 * math.exp(log_r) * (flat**2).sum(1) - 0.5 * d * math.log(2 * math.pi) \
        + 0.5 * d * log_r
    return -log_p


def test_zero_network_matches_the_closed_form_continuous(tmp_path):
    cset = zero_eps_set(tmp_path / "z", "8gaussians")
    x = torch.as_tensor(load_data("8gaussians", "test").x[:64], dtype=torch.float64)
    nll = ode_nll(ProbabilityFlow(cset), x, ODESettings(steps=60))
    assert torch.allclose(nll, closed_form_nll(cset, x), rtol=0, atol=1e-6)


def test_zero_network_dequantized_digits_and_hutchinson(tmp_path):
    """D = 64 > 16: Hutchinson, exact here since df/dx = -b/2 I; the bound adds -D log Delta."""
    cset = zero_eps_set(tmp_path / "zd", "digits")
    x = torch.as_tensor(load_data("digits", "test").x[:8], dtype=torch.float64)
    nll = ode_nll(ProbabilityFlow(cset), x, ODESettings(steps=40, probes=2),
                  torch.Generator().manual_seed(5))
    delta = 2 / 16
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = x + delta * (u - 0.5)
    expected = closed_form_nll(cset, y) - 64 * math.log(delta)
    assert torch.allclose(nll, expected, rtol=0, atol=1e-6)


def test_exact_divergence_equals_hutchinson_mean_within_noise(tiny_set_2d):
    flow = ProbabilityFlow(load_set(tiny_set_2d))
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(32, 2, generator=g, dtype=torch.float64)

    lam = flow.lam_at(7.5)  # between two integer times: eps interpolated

    def fn(v):
        return flow.drift(v, lam)

    f, exact = divergence(fn, x)
    means = []
    for _ in range(20):
        z = 2.0 * torch.randint(0, 2, (20, 32, 2), generator=g).to(torch.float64) - 1.0
        f2, est = divergence(fn, x, z)
        means.append(est)
    m = torch.stack(means)  # [20 chunks, 32]
    se = m.std(0) / math.sqrt(m.shape[0])
    assert torch.equal(f, f2)
    assert (exact.abs() > 1e-3).all()
    assert ((m.mean(0) - exact).abs() <= 5 * se + 1e-9).all()
    assert not torch.allclose(m[0], exact)  # the estimator does have noise here


def test_eval_bpd_method_ode_cli(tiny_set_2d):
    args = ["eval-bpd", "--set", str(tiny_set_2d), "--data", "8gaussians", "--samples", "40",
            "--method", "ode", "--ode-steps", "8"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["elbo"][0]["schedule"] == "full" and out["ode"]["n"] == 40
    assert out["ode"]["divergence"] == "exact" and not out["ode"]["dequantized"]
    assert math.isfinite(out["ode"]["bpd"]) and out["ode"]["bpd_se"] > 0
    res = runner.invoke(app, [*args, "--schedule", "even:5"])
    assert res.exit_code == 0, res.output
    assert "probability-flow ODE" in res.output and "even:5" in res.output
    res = runner.invoke(app, [*args[:-4], "--method", "flowmatch"])
    assert res.exit_code == 2 and "unknown --method" in res.output
    res = runner.invoke(app, [*args[:-4]])
    assert res.exit_code == 2 and "at least one --schedule" in res.output
    with pytest.raises(BadInputError, match="ode-steps"):
        ODESettings(steps=0)


@pytest.mark.slow
def test_ode_likelihood_of_a_well_trained_set_matches_the_true_density(tmp_path):
    """8gaussians, T = 100, one v-prediction MLP (1500 steps, ~20 s). Tolerance: the mean
    of -log p_ODE(x) - (-log p_true(x)) over 300 test points is within 0.1 nats; the
    negative ELBO of the full chain is above the true -log p (the ELBO is a lower bound
    of the model's likelihood, which on average cannot exceed the data's own)."""
    from conftest import make_trained_set

    from ddpm_tools.models import MLPConfig

    cset = load_set(make_trained_set(tmp_path / "g8", T=100, intervals=1, steps=1500,
                                     batch_size=256, prediction="v",
                                     arch_config=MLPConfig(hidden=128, depth=3, time_dim=32)))
    data = load_data("8gaussians", "test")
    n = 300
    x0 = select_examples(data, n, 0)
    true_nll = -true_log_density("8gaussians", x0.numpy())
    flow = ProbabilityFlow(cset)
    gap = ode_nll(flow, x0, ODESettings(steps=100)).numpy() - true_nll
    assert abs(gap.mean()) < 0.1, (gap.mean(), gap.std() / math.sqrt(n))
    (elbo,) = eval_bpd(cset, data, [("full", np.arange(101))], samples=n)
    to_bpd = 1 / (2 * math.log(2))
    assert elbo.bpd - 3 * elbo.bpd_se > true_nll.mean() * to_bpd
    r = eval_ode(cset, data, samples=n, settings=ODESettings(steps=100))
    assert r.bpd == pytest.approx((gap.mean() + true_nll.mean()) * to_bpd, abs=1e-6)
