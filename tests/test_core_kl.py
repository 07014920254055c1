"""core/kl.py and core/stats.py: the closed forms equal a per-dimension brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_tools.core.gaussian import decoder_nll, normal_kl
from ddpm_tools.core.kl import decoder_cost, exp_sums, fixed_variance_kl, learned_range_kl
from ddpm_tools.core.stats import mean_and_se


def _inputs(n=5, D=7, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, D), generator=g, dtype=torch.float64) * 2 - 1
    xh = x0 + 0.3 * torch.randn((n, D), generator=g, dtype=torch.float64)
    log_bt = torch.log(torch.rand(m, generator=g, dtype=torch.float64) * 0.1 + 0.01)
    log_b = log_bt + torch.rand(m, generator=g, dtype=torch.float64)  # beta > beta_tilde
    coef = torch.rand(m, generator=g, dtype=torch.float64)
    u = torch.rand((n, D), generator=g, dtype=torch.float64)
    return x0, xh, log_bt, log_b, coef, u


def test_fixed_variance_kl_is_the_summed_gaussian_kl():
    x0, xh, log_bt, log_b, coef, _ = _inputs()
    got = fixed_variance_kl(x0.shape[1], log_bt, log_b, coef**2,
                            ((x0 - xh) ** 2).sum(1, keepdim=True))
    for j in range(log_bt.shape[0]):
        # means differ by coef (x0 - x0_hat); the common part of the means cancels
        ref = normal_kl(coef[j] * x0, float(log_bt[j]), coef[j] * xh, float(log_b[j])).sum(1)
        torch.testing.assert_close(got[:, j], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_learned_range_kl_is_the_per_dimension_gaussian_kl(chunk):
    x0, xh, log_bt, log_b, coef, u = _inputs()
    got = learned_range_kl(u, (x0 - xh) ** 2, log_bt, log_b, coef**2, chunk)
    for j in range(log_bt.shape[0]):
        lv = u * log_b[j] + (1 - u) * log_bt[j]  # Nichol & Dhariwal 2021, eq. (15)
        ref = normal_kl(coef[j] * x0, float(log_bt[j]), coef[j] * xh, lv).sum(1)
        torch.testing.assert_close(got[:, j], ref, rtol=1e-12, atol=1e-12)


def test_exp_sums_equal_numpy():
    x0, xh, log_bt, log_b, _, u = _inputs()
    delta = log_b - log_bt
    a, b = exp_sums(u, (x0 - xh) ** 2, delta)
    e = np.exp(-u.numpy()[:, :, None] * delta.numpy()[None, None, :])
    np.testing.assert_allclose(a.numpy(), e.sum(1), rtol=1e-13)
    np.testing.assert_allclose(b.numpy(), np.einsum("nd,ndc->nc", ((x0 - xh) ** 2).numpy(), e),
                               rtol=1e-13)


def test_decoder_cost_sums_decoder_nll_over_dimensions():
    x0, xh, *_ = _inputs()
    x0 = torch.round((x0 + 1) * 8) / 8 - 1  # 17 levels
    got = decoder_cost(x0.reshape(5, 1, 7), xh.reshape(5, 1, 7), -3.0, 17)
    torch.testing.assert_close(got, decoder_nll(x0, xh, -3.0, 17).sum(1))
    assert got.shape == (5,)


def test_mean_and_se_numpy_and_torch():
    x = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]])
    m, se = mean_and_se(x)
    np.testing.assert_allclose(m, [3.0, 5.0])
    np.testing.assert_allclose(se, [2.0 / math.sqrt(3), math.sqrt(7.0) / math.sqrt(3)])
    mt, set_ = mean_and_se(torch.as_tensor(x))
    np.testing.assert_allclose(mt.numpy(), m)
    np.testing.assert_allclose(set_.numpy(), se)
    m1, se1 = mean_and_se(np.array([4.0]))
    assert float(m1) == 4.0 and float(se1) == 0.0
