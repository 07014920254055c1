"""Gaussian KL, discretized likelihood, continuous density, prior term, units."""

import math

import numpy as np
import pytest
import torch

from ddpm_tools.core.gaussian import (
    decoder_nll,
    discretized_gaussian_log_likelihood,
    gaussian_log_density,
    nats_to_bpd,
    normal_kl,
    prior_kl,
)


def test_normal_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(1.7)
    n = 2_000_000
    x = m1 + math.exp(0.5 * lv1) * torch.randn(n, generator=g, dtype=torch.float64)
    log_p = gaussian_log_density(x, torch.tensor(m1, dtype=torch.float64), lv1)
    log_q = gaussian_log_density(x, torch.tensor(m2, dtype=torch.float64), lv2)
    mc = (log_p - log_q)
    kl = normal_kl(torch.tensor(m1, dtype=torch.float64), lv1,
                   torch.tensor(m2, dtype=torch.float64), lv2)
    se = mc.std().item() / math.sqrt(n)
    assert abs(kl.item() - mc.mean().item()) < 4 * se
    assert kl.item() > 0


def test_normal_kl_zero_for_equal_and_elementwise_shape():
    m = torch.randn(3, 4, dtype=torch.float64)
    kl = normal_kl(m, torch.zeros(3, 4, dtype=torch.float64), m, 0.0)
    assert kl.shape == (3, 4) and torch.all(kl.abs() < 1e-15)


@pytest.mark.parametrize("levels", [256, 17, 2])
@pytest.mark.parametrize("mean,scale", [(0.0, 0.01), (0.95, 0.3), (-1.3, 0.05),
                                        (0.123, 2.0), (0.5, 1e-4)])
def test_discretized_likelihood_sums_to_one_over_all_levels(levels, mean, scale):
    x = torch.linspace(-1, 1, levels, dtype=torch.float64)
    m = torch.full_like(x, mean)
    ls = torch.full_like(x, math.log(scale))
    logp = discretized_gaussian_log_likelihood(x, m, ls, levels)
    assert torch.all(logp <= 0)
    assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_likelihood_tails_are_finite_and_accurate():
    # far in the upper tail of a narrow Gaussian: exact via the reflected form
    x = torch.tensor([0.0], dtype=torch.float64)
    m = torch.tensor([-0.5], dtype=torch.float64)
    ls = torch.tensor([math.log(0.05)], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, m, ls, 256).item()
    from scipy.stats import norm  # scipy ships with scikit-learn
    h = 1 / 255
    ref = math.log(norm.sf((x.item() - h - m.item()) / 0.05) - norm.sf((x.item() + h - m.item())
                                                                        / 0.05))
    assert math.isfinite(logp) and logp == pytest.approx(ref, rel=1e-9)


def test_gaussian_density_integrates_to_one():
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    p = gaussian_log_density(x, torch.tensor(0.7, dtype=torch.float64), math.log(0.8)).exp()
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=1e-10)


def test_decoder_nll_switches_between_discrete_and_continuous():
    x0 = torch.tensor([0.0], dtype=torch.float64)
    cont = decoder_nll(x0, x0, math.log(0.01), None).item()
    disc = decoder_nll(x0, x0, math.log(0.01), 17).item()
    assert cont == pytest.approx(0.5 * math.log(2 * math.pi * 0.01))
    assert disc > 0  # a probability below 1


def test_prior_kl_matches_normal_kl_and_vanishes_for_pure_noise():
    x0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    lab = math.log(0.04)
    ref = normal_kl(0.2 * x0, math.log(0.96), torch.zeros(2, dtype=torch.float64), 0.0)
    torch.testing.assert_close(prior_kl(x0, lab), ref)
    assert prior_kl(x0, math.log(1e-12)).abs().max().item() < 1e-11


def test_nats_to_bpd():
    assert nats_to_bpd(64 * math.log(2), 64) == pytest.approx(1.0)
    np.testing.assert_allclose(nats_to_bpd(np.array([math.log(2) * 2]), 2), [1.0])
