"""core/kl.py and core/stats.py: the closed forms equal a per-dimension brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_tools.core.gaussian import decoder_nll, normal_kl
from ddpm_tools.core.kl import decoder_cost, fixed_variance_kl, learned_range_kl
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


@pytest.mark.parametrize("method", ["auto", "fast", "direct"])
def test_learned_range_kl_is_the_per_dimension_gaussian_kl(method):
    x0, xh, log_bt, log_b, coef, u = _inputs()
    got = learned_range_kl(u, (x0 - xh) ** 2, log_bt, log_b, coef**2, method=method)
    for j in range(log_bt.shape[0]):
        lv = u * log_b[j] + (1 - u) * log_bt[j]  # Nichol & Dhariwal 2021, eq. (15)
        ref = normal_kl(coef[j] * x0, float(log_bt[j]), coef[j] * xh, lv).sum(1)
        torch.testing.assert_close(got[:, j], ref, rtol=1e-12, atol=1e-12)


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


@pytest.mark.parametrize("schedule, T", [("cosine", 1000), ("linear", 4000)])
def test_learned_range_kl_fast_equals_direct_on_a_whole_column(schedule, T):
    """Moments (``auto``) against term-by-term sums on every step t -> s < t of columns
    of a long chain, with v and errors of a network's size, D = 3 * 32 * 32: 1e-10."""
    from ddpm_tools.core.diffusion import posterior_coeffs
    from ddpm_tools.core.noise_schedule import make_schedule

    sch = make_schedule(schedule, T)
    g = torch.Generator().manual_seed(1)
    n, D = 3, 3072
    u = torch.rand((n, D), generator=g, dtype=torch.float64).clamp(0.05, 0.95)
    err2 = torch.rand((n, D), generator=g, dtype=torch.float64) ** 4 * 0.1
    for t in (2, T // 3, T):
        s = np.arange(1, t)
        c = posterior_coeffs(sch, s, t)
        args = (u, err2, torch.as_tensor(c.log_beta_tilde), torch.as_tensor(c.log_beta),
                torch.as_tensor(c.coef_x0**2))
        fast = learned_range_kl(*args, method="auto")
        direct = learned_range_kl(*args, method="direct")
        torch.testing.assert_close(fast, direct, rtol=1e-10, atol=0.0)


def test_phi_sums_by_moments_equal_the_direct_sums_small_and_large_delta():
    from ddpm_tools.core.kl import phi_sums

    g = torch.Generator().manual_seed(2)
    u = torch.rand((4, 500), generator=g, dtype=torch.float64)
    u[0] = 1e-3 * u[0]  # an example whose variance stays near beta_tilde
    delta = torch.tensor([0.0, 1e-8, 1e-4, 0.3, 3.9, 4.1, 11.5], dtype=torch.float64)
    fast = phi_sums(u, delta)
    y = u[:, :, None] * delta
    series = sum((-y) ** k / math.factorial(k) for k in range(2, 12))  # accurate for y < 0.1
    ref = torch.where(y < 0.1, series, torch.expm1(-y) + y).sum(1)
    assert (fast[:, 0] == 0).all() and (fast[:, 1:] > 0).all()
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=0.0)
    big = delta >= 1e-4  # where expm1's eps / y is small, "direct" agrees too
    torch.testing.assert_close(phi_sums(u, delta, "direct")[:, big], ref[:, big], rtol=1e-10,
                               atol=0.0)
    y = u[1, 0] * delta[2]  # phi(y) ~ y^2 / 2 for small y: no cancellation lost
    assert float(phi_sums(u[1:2, :1], delta[2:3])) == pytest.approx(float(y * y / 2), rel=1e-4)


def test_cost_table_of_a_trained_set_is_the_same_with_moments_and_direct_sums(
        tiny_set_digits, monkeypatch):
    from ddpm_tools.costs import estimate
    from ddpm_tools.costs.estimate import (
        CostColumns,
        CostSettings,
        compute_columns,
        select_examples,
    )
    from ddpm_tools.data import load_data
    from ddpm_tools.sets import load_set

    cset = load_set(tiny_set_digits)
    x0 = select_examples(load_data("digits", "train"), 16, 0)
    tables = {}
    for method in ("direct", "auto"):
        monkeypatch.setattr(estimate, "EXPSUM_METHOD", method)
        cols = CostColumns.empty(cset.T)
        compute_columns(cset, x0, CostSettings(samples=16), list(range(1, cset.T + 1)), cols)
        tables[method] = cols.L
    used = np.triu(np.ones_like(tables["auto"], dtype=bool), 1)
    np.testing.assert_allclose(tables["auto"][used], tables["direct"][used], rtol=1e-10, atol=0)
