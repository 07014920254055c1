"""Noise schedules: monotone, alpha_bar a direct product, improved-diffusion's values, errors."""

import math

import numpy as np
import pytest

from ddpm_tools.core.noise_schedule import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    make_schedule,
    schedule_from_spec,
)
from ddpm_tools.errors import DdpmToolsError


@pytest.mark.parametrize("name,T", [("linear", 21), ("linear", 1000), ("linear", 4000),
                                    ("cosine", 2), ("cosine", 10), ("cosine", 4000)])
def test_schedules_monotone_and_alpha_bar_is_direct_product(name, T):
    s = make_schedule(name, T)
    assert s.T == T and s.betas.dtype == np.float64
    assert s.alpha_bar[0] == 1.0
    direct = np.array([np.prod(1.0 - s.betas[1 : t + 1]) for t in range(T + 1)])
    np.testing.assert_allclose(s.alpha_bar, direct, rtol=1e-12, atol=0)
    assert np.all(np.diff(s.alpha_bar) < 0)
    assert np.all((s.betas[1:] > 0) & (s.betas[1:] < 1))


def test_linear_matches_improved_diffusion_scaling():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b = linear_betas(250)  # scaled by 1000 / T
    assert b[0] == pytest.approx(4e-4) and b[-1] == pytest.approx(0.08)
    assert np.all(np.diff(b) > 0)


def test_cosine_follows_f_and_clips():
    T = 1000
    b = cosine_betas(T)
    f = [math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(T + 1)]
    ab = np.cumprod(1 - b)
    # away from the clipped end, alpha_bar_t = f(t) / f(0)
    np.testing.assert_allclose(ab[:900], np.array(f[1:901]) / f[0], rtol=1e-9)
    assert b.max() == pytest.approx(0.999)


def test_spec_round_trip():
    s = make_schedule("cosine", 50)
    s2 = schedule_from_spec(s.to_spec())
    np.testing.assert_array_equal(s.betas, s2.betas)
    assert s2.name == "cosine"


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.0, 0.1, -0.2, 0.3], "beta_2"),
        ([0.0, 0.1, 1.0, 0.3], "beta_2"),
        ([0.0, 0.1, float("nan"), 0.3], "beta_2"),
        ([0.5, 0.1, 0.2], "betas\\[0\\]"),
    ],
)
def test_bad_betas_raise_clear_error(betas, match):
    with pytest.raises(DdpmToolsError, match=match):
        NoiseSchedule(np.array(betas))


def test_bad_names_and_T():
    with pytest.raises(DdpmToolsError, match="unknown noise schedule"):
        make_schedule("sigmoid", 10)
    with pytest.raises(DdpmToolsError, match="T must be"):
        make_schedule("linear", 1)
    with pytest.raises(DdpmToolsError, match="T >= 21"):
        make_schedule("linear", 10)
    with pytest.raises(DdpmToolsError, match="outside \\[1, T\\]"):
        make_schedule("linear", 30).check_t([3, 31])
