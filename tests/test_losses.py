"""Tests of ddpm_tools.training.losses: shapes, closed forms, stop-gradient, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm_tools.core.diffusion import q_sample
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.errors import BadInputError
from ddpm_tools.models import MLPConfig, build_network
from ddpm_tools.training.losses import diffusion_loss, vlb_term

SCHEDULE = make_schedule("linear", 50)
T_MIXED = np.array([1, 1, 2, 3, 17, 49, 50, 50], dtype=np.int64)  # decoder and KL rows


def _batch(shape, levels, dtype=torch.float64, seed=0):
    """(x0, noise, x_t) with B = len(T_MIXED); x0 on ``levels`` levels, or Gaussian."""
    gen = torch.Generator().manual_seed(seed)
    b = len(T_MIXED)
    if levels is None:
        x0 = torch.randn((b, *shape), generator=gen, dtype=dtype)
    else:
        k = torch.randint(0, levels, (b, *shape), generator=gen)
        x0 = (2 * k / (levels - 1) - 1).to(dtype)
    noise = torch.randn((b, *shape), generator=gen, dtype=dtype)
    return x0, noise, q_sample(SCHEDULE, x0, T_MIXED, noise)


def _out(shape, factor, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn((len(T_MIXED), factor * shape[0], *shape[1:]), generator=gen, dtype=dtype)
    return out.clamp(-1, 1).requires_grad_(True)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize(("shape", "levels"), [((2,), None), ((1, 8, 8), 17), ((3, 4, 4), 256)])
def test_loss_shape_and_simple_term(prediction, variance, shape, levels):
    x0, noise, x_t = _batch(shape, levels, dtype=torch.float32)
    factor = 2 if variance == "learned_range" else 1
    out = _out(shape, factor, dtype=torch.float32)
    loss = diffusion_loss(SCHEDULE, out, x0, x_t, T_MIXED, noise, prediction, variance, levels)
    assert loss.shape == (len(T_MIXED),) and torch.isfinite(loss).all()
    # explicit simple term: Ho et al. 2020 eq. (14) and its x0 / v analogues
    ab = torch.as_tensor(SCHEDULE.alpha_bar[T_MIXED], dtype=torch.float32)
    ab = ab.reshape(-1, *([1] * len(shape)))
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    pred = out[:, :shape[0]]
    simple = ((pred - target) ** 2).reshape(len(T_MIXED), -1).mean(1)
    if variance == "learned_range":
        vlb = vlb_term(SCHEDULE, pred, out[:, shape[0]:], x0, x_t, T_MIXED, prediction, levels)
        expected = simple + 0.001 * SCHEDULE.T * vlb
        assert not torch.allclose(loss, simple)
    else:
        expected = simple
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(("shape", "levels"), [((2,), None), ((1, 4, 4), 17)])
def test_vlb_gradient_reaches_only_the_variance_half(prediction, shape, levels):
    x0, noise, x_t = _batch(shape, levels)
    out = _out(shape, 2)
    c = shape[0]
    vlb = vlb_term(SCHEDULE, out[:, :c], out[:, c:], x0, x_t, T_MIXED, prediction, levels)
    vlb.sum().backward()
    assert out.grad is not None
    assert torch.all(out.grad[:, :c] == 0)
    assert torch.all(out.grad[:, c:].reshape(len(T_MIXED), -1).abs().sum(1) > 0)
    # so the hybrid loss gives the prediction half exactly L_simple's gradient
    g_hybrid = torch.autograd.grad(diffusion_loss(
        SCHEDULE, out, x0, x_t, T_MIXED, noise, prediction, "learned_range", levels).sum(), out)[0]
    pred = out[:, :c].detach().requires_grad_(True)
    g_simple = torch.autograd.grad(diffusion_loss(
        SCHEDULE, pred, x0, x_t, T_MIXED, noise, prediction, "fixed_small", levels).sum(), pred)[0]
    torch.testing.assert_close(g_hybrid[:, :c], g_simple)


def _explicit_vlb(eps_hat, raw, x0, x_t, t, levels):
    """L_{t-1} per example in nats/dim, written out from Ho et al. 2020 eqs. (6), (7), (13)
    and Nichol & Dhariwal 2021 eq. (15) in float64 numpy (eps-prediction)."""
    betas = SCHEDULE.betas[1:]
    ab = np.concatenate([[1.0], np.cumprod(1.0 - betas)])  # alpha_bar_0..T
    eps_hat, raw, x0, x_t = (a.detach().numpy().reshape(len(t), -1)
                             for a in (eps_hat, raw, x0, x_t))
    v = (raw + 1) / 2
    res = []
    for i, ti in enumerate(t):
        x0_hat = (x_t[i] - math.sqrt(1 - ab[ti]) * eps_hat[i]) / math.sqrt(ab[ti])
        if levels is not None:
            x0_hat = np.clip(x0_hat, -1, 1)
        beta = betas[ti - 1]
        if ti >= 2:
            beta_tilde = (1 - ab[ti - 1]) / (1 - ab[ti]) * beta
            var = np.exp(v[i] * np.log(beta) + (1 - v[i]) * np.log(beta_tilde))
            coef_x0 = math.sqrt(ab[ti - 1]) * beta / (1 - ab[ti])
            coef_xt = math.sqrt(1 - beta) * (1 - ab[ti - 1]) / (1 - ab[ti])
            mu_true = coef_x0 * x0[i] + coef_xt * x_t[i]
            mu_model = coef_x0 * x0_hat + coef_xt * x_t[i]
            kl = (0.5 * np.log(var / beta_tilde)
                  + (beta_tilde + (mu_true - mu_model) ** 2) / (2 * var) - 0.5)
            res.append(kl.mean())
        else:  # decoder: variance between beta_tilde_2 and beta_1 (docs/DESIGN.md decoder rule)
            beta_tilde_2 = (1 - ab[1]) / (1 - ab[2]) * betas[1]
            var = np.exp(v[i] * np.log(beta) + (1 - v[i]) * np.log(beta_tilde_2))
            sd = np.sqrt(var)
            if levels is None:
                nll = 0.5 * np.log(2 * np.pi * var) + (x0[i] - x0_hat) ** 2 / (2 * var)
            else:
                h = 1 / (levels - 1)
                up = norm.cdf((x0[i] + h - x0_hat) / sd)
                lo = norm.cdf((x0[i] - h - x0_hat) / sd)
                p = np.where(x0[i] < -1 + h / 2, up, np.where(x0[i] > 1 - h / 2, 1 - lo, up - lo))
                nll = -np.log(p)
            res.append(nll.mean())
    return np.array(res)


@pytest.mark.parametrize(("shape", "levels"), [((2,), None), ((1, 4, 4), 17)])
def test_vlb_term_equals_explicit_computation(shape, levels):
    x0, noise, x_t = _batch(shape, levels)
    # a prediction close to the truth, so the decoder terms are moderate
    gen = torch.Generator().manual_seed(3)
    eps_hat = noise + 0.3 * torch.randn(noise.shape, generator=gen, dtype=noise.dtype)
    raw = 2 * torch.rand(noise.shape, generator=gen, dtype=noise.dtype) - 1
    got = vlb_term(SCHEDULE, eps_hat, raw, x0, x_t, T_MIXED, "eps", levels)
    want = _explicit_vlb(eps_hat, raw, x0, x_t, T_MIXED, levels)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-9)
    assert np.all(want[T_MIXED >= 2] > 0)  # KL rows


def test_bad_inputs():
    x0, noise, x_t = _batch((2,), None, dtype=torch.float32)
    out = _out((2,), 1, dtype=torch.float32)
    args = (SCHEDULE, out, x0, x_t, T_MIXED, noise)
    with pytest.raises(BadInputError, match="out_factor=2"):
        diffusion_loss(*args, "eps", "learned_range", None)
    with pytest.raises(BadInputError, match="prediction"):
        diffusion_loss(*args, "score", "fixed_small", None)
    with pytest.raises(BadInputError, match="variance"):
        diffusion_loss(*args, "eps", "learned", None)
    with pytest.raises(BadInputError, match="levels"):
        diffusion_loss(*args, "eps", "fixed_small", 1)
    with pytest.raises(BadInputError, match="outside"):
        diffusion_loss(SCHEDULE, out, x0, x_t, T_MIXED + 1, noise, "eps", "fixed_small", None)
    with pytest.raises(BadInputError, match="shape"):
        diffusion_loss(SCHEDULE, out, x0, x_t[:3], T_MIXED, noise, "eps", "fixed_small", None)
    with pytest.raises(BadInputError, match="shape"):
        diffusion_loss(SCHEDULE, out, x0, x_t, T_MIXED[:3], noise, "eps", "fixed_small", None)


@pytest.mark.parametrize(("prediction", "variance"), [("eps", "fixed_small"),
                                                      ("v", "learned_range")])
def test_tiny_mlp_training_reduces_the_loss(prediction, variance):
    """200 Adam steps on a 2-D Gaussian, T = 50: the held-out loss drops by more than half."""
    schedule = SCHEDULE
    mean, std = torch.tensor([1.0, -0.5]), 0.1
    gen = torch.Generator().manual_seed(0)
    factor = 2 if variance == "learned_range" else 1

    def batch(n):
        x0 = mean + std * torch.randn((n, 2), generator=gen)
        t = torch.randint(1, schedule.T + 1, (n,), generator=gen)
        noise = torch.randn((n, 2), generator=gen)
        return x0, t, noise, q_sample(schedule, x0, t.numpy(), noise)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(MLPConfig(hidden=64, depth=2, time_dim=16), (2,), factor)
    before, after = _train(schedule, net, batch, prediction, variance)
    assert after < 0.5 * before, (before, after)


def _train(schedule, net, batch, prediction, variance):
    """(held-out loss before, after) 200 Adam steps with batch size 128."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x0e, te, ne, xte = batch(2048)

    def held_out():
        with torch.no_grad():
            return diffusion_loss(schedule, net(xte, te), x0e, xte, te.numpy(), ne,
                                  prediction, variance, None).mean().item()

    before = held_out()
    for _ in range(200):
        x0, t, noise, x_t = batch(128)
        loss = diffusion_loss(schedule, net(x_t, t), x0, x_t, t.numpy(), noise,
                              prediction, variance, None).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, held_out()
