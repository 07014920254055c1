"""Posteriors for any skip, respacing identity, predictions, step variances."""

import numpy as np
import pytest
import torch

from ddpm_tools.core.diffusion import (
    eps_from_x0,
    model_log_variance,
    posterior_coeffs,
    q_coeffs,
    step_log_variance_bounds,
    target_for_prediction,
    v_from_x0_eps,
    x0_from_prediction,
)
from ddpm_tools.core.noise_schedule import NoiseSchedule, make_schedule
from ddpm_tools.errors import DdpmToolsError


def _gauss(x, m, v):
    return np.exp(-0.5 * (x - m) ** 2 / v) / np.sqrt(2 * np.pi * v)


@pytest.mark.parametrize("s,t", [(1, 2), (3, 17), (10, 40), (39, 40)])
def test_posterior_matches_bayes_rule_numerically_in_1d(s, t):
    sch = make_schedule("cosine", 40)
    x0, xt = 0.3, -0.7
    ab = sch.alpha_bar
    grid = np.linspace(-6, 6, 200001)
    # q(x_s | x_0) q(x_t | x_s) / q(x_t | x_0), normalised numerically on the grid
    a_ts = ab[t] / ab[s]
    prior = _gauss(grid, np.sqrt(ab[s]) * x0, 1 - ab[s])
    like = _gauss(xt, np.sqrt(a_ts) * grid, 1 - a_ts)
    post = prior * like
    post /= np.trapezoid(post, grid)
    mean = np.trapezoid(grid * post, grid)
    var = np.trapezoid((grid - mean) ** 2 * post, grid)
    c = posterior_coeffs(sch, s, t)
    assert c.coef_x0 * x0 + c.coef_xt * xt == pytest.approx(mean, abs=1e-7)
    assert c.beta_tilde == pytest.approx(var, rel=1e-6)


def test_decoder_step_posterior_is_point_mass_at_x0():
    c = posterior_coeffs(make_schedule("linear", 30), 0, 7)
    assert c.beta_tilde == 0.0 and c.coef_x0 == pytest.approx(1.0) and c.coef_xt == 0.0


def test_respacing_that_keeps_every_step_reproduces_the_chain_exactly():
    sch = make_schedule("linear", 100)
    t = np.arange(2, 101)
    c = posterior_coeffs(sch, t - 1, t)
    b = sch.betas[t]
    ab, ab_prev = sch.alpha_bar[t], sch.alpha_bar[t - 1]
    # improved-diffusion GaussianDiffusion one-step formulas
    np.testing.assert_allclose(c.beta, b, rtol=1e-12)
    np.testing.assert_allclose(c.beta_tilde, b * (1 - ab_prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(c.coef_x0, b * np.sqrt(ab_prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(c.coef_xt, (1 - ab_prev) * np.sqrt(1 - b) / (1 - ab), rtol=1e-12)
    # SpacedDiffusion with all steps kept: new betas from kept alpha_bar equal the old
    kept = sch.alpha_bar[1:]
    new_betas = 1 - kept / np.concatenate([[1.0], kept[:-1]])
    np.testing.assert_allclose(NoiseSchedule(np.concatenate([[0.0], new_betas])).betas,
                               sch.betas, rtol=1e-12)


def test_skip_posterior_equals_spaced_chain_posterior():
    """A skip t -> s equals the one-step posterior of the respaced chain that keeps s and t."""
    sch = make_schedule("cosine", 200)
    s, t = 37, 121
    c = posterior_coeffs(sch, s, t)
    ab_s, ab_t = sch.alpha_bar[s], sch.alpha_bar[t]
    new_beta = 1 - ab_t / ab_s
    assert c.beta == pytest.approx(new_beta, rel=1e-12)
    assert c.beta_tilde == pytest.approx(new_beta * (1 - ab_s) / (1 - ab_t), rel=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip(prediction):
    sch = make_schedule("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = np.array([1, 5, 10, 25, 49, 50])
    a, sig = q_coeffs(sch, t)
    xt = torch.as_tensor(a)[:, None] * x0 + torch.as_tensor(sig)[:, None] * eps
    out = target_for_prediction(sch, prediction, t, x0, eps)
    torch.testing.assert_close(x0_from_prediction(sch, prediction, xt, t, out), x0)
    torch.testing.assert_close(eps_from_x0(sch, xt, t, x0), eps)
    if prediction == "v":
        torch.testing.assert_close(out, v_from_x0_eps(sch, t, x0, eps))


def test_step_variances_match_respaced_improved_diffusion_and_decoder_rule():
    sch = make_schedule("linear", 100)
    small, large = step_log_variance_bounds(sch, np.array([5, 0, 0]), np.array([20, 1, 30]))
    c = posterior_coeffs(sch, 5, 20)
    assert small[0] == pytest.approx(np.log(c.beta_tilde)) and large[0] == pytest.approx(
        np.log(c.beta))
    # decoder at t = 1: improved-diffusion's clipped posterior variance beta_tilde_2 and beta_1
    bt2 = sch.betas[2] * (1 - sch.alpha_bar[1]) / (1 - sch.alpha_bar[2])
    assert small[1] == pytest.approx(np.log(bt2), rel=1e-12)
    assert large[1] == pytest.approx(np.log(sch.betas[1]), rel=1e-12)
    # decoder at larger t depends on t alone, small < large
    assert large[2] == pytest.approx(np.log(1 - sch.alpha_bar[30]))
    assert small[2] < large[2]
    v = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    lv = model_log_variance("learned_range", torch.tensor(small), torch.tensor(large), v)
    torch.testing.assert_close(lv, v * torch.tensor(large) + (1 - v) * torch.tensor(small))


@pytest.mark.parametrize("s,t,match", [(5, 5, "0 <= s < t"), (6, 5, "0 <= s < t"),
                                        (1, 11, "T = 10"), (-1, 3, "0 <= s < t")])
def test_bad_steps_raise(s, t, match):
    with pytest.raises(DdpmToolsError, match=match):
        posterior_coeffs(make_schedule("cosine", 10), s, t)


def test_bad_variance_and_prediction_names():
    x = torch.zeros(2)
    with pytest.raises(DdpmToolsError, match="variance type"):
        model_log_variance("fixed_medium", x, x)
    with pytest.raises(DdpmToolsError, match="learned_range needs"):
        model_log_variance("learned_range", x, x)
    with pytest.raises(DdpmToolsError, match="prediction"):
        x0_from_prediction(make_schedule("cosine", 10), "score", x, np.array([1, 2]), x)
