"""Exponential sums: the moment (Chebyshev) path against the direct sum, and the fallback."""

import math

import numpy as np
import pytest
import torch

from ddpm_tools.core import expsum
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.errors import BadInputError

RTOL = 1e-10


def largest_delta(T: int = 4000) -> float:
    """max over 1 <= s < t <= T of log((1 - alpha_bar_t) / (1 - alpha_bar_s)), cosine."""
    lab = make_schedule("cosine", T).log_alpha_bar
    return float(np.log(-np.expm1(lab[T])) - np.log(-np.expm1(lab[1])))


DELTA_MAX = largest_delta()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs()).max())


def inputs(n, D, m, u_lo, u_hi, seed=0, delta_max=DELTA_MAX):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    u = u_lo + (u_hi - u_lo) * torch.rand(n, D, generator=g, dtype=f64)
    w = torch.rand(n, D, generator=g, dtype=f64) ** 3  # many small weights
    delta = torch.rand(m, generator=g, dtype=f64) * delta_max
    delta[0], delta[-1] = 0.0, delta_max
    return w, u, delta


def test_largest_delta_of_a_long_cosine_schedule():
    assert 11 < DELTA_MAX < 12  # log(1 / beta_1) for T = 4000


@pytest.mark.parametrize(
    "n,D,m,u_lo,u_hi",
    [(6, 3072, 200, 0.0, 1.0),  # u over [0, 1]: several pieces
     (5, 64, 300, 0.4, 0.4),  # u constant per example
     (7, 1, 100, 0.0, 1.0),  # one dimension
     (4, 50, 80, -2.0, 3.0),  # u outside [0, 1]
     (3, 500, 150, 0.45, 0.55)],  # a narrow range: one piece
)
def test_fast_equals_direct(n, D, m, u_lo, u_hi):
    w, u, delta = inputs(n, D, m, u_lo, u_hi)
    fast = expsum.exp_sums(w, u, delta, method="fast")
    direct = expsum.exp_sums(w, u, delta, method="direct")
    assert fast.shape == (n, m) and fast.dtype == torch.float64
    assert rel_err(fast, direct) < RTOL


def test_weight_at_one_end_of_the_range_is_still_exact():
    """The worst case of the relative bound: all weight at u_max, the sum at its smallest."""
    w, u, delta = inputs(4, 400, 100, 0.0, 1.0, seed=1)
    u[:, 0], u[:, 1] = 0.0, 1.0  # the range is [0, 1] ...
    w[:] = 0.0
    w[:, 1] = 1.0  # ... with every weight at u = 1
    w[:, 2:5] = 1e-300
    fast = expsum.exp_sums(w, u, delta, method="fast")
    assert rel_err(fast, torch.exp(-delta)[None, :].expand(4, -1)) < RTOL


def test_learned_range_sums_both_weights_and_long_columns():
    g = torch.Generator().manual_seed(3)
    n, D, m = 4, 3072, 1000
    u = torch.rand(n, D, generator=g, dtype=torch.float64)
    err2 = torch.rand(n, D, generator=g, dtype=torch.float64) ** 2
    delta = torch.linspace(0.0, DELTA_MAX, m, dtype=torch.float64)
    ones_f, err_f = expsum.learned_range_sums(u, err2, delta)
    assert expsum.plan(u, delta).fast  # auto takes the fast path here
    ones_d, err_d = expsum.learned_range_sums(u, err2, delta, method="direct")
    assert rel_err(ones_f, ones_d) < RTOL and rel_err(err_f, err_d) < RTOL


def test_points_follow_the_bound():
    def log_bound(z: float, q: int) -> float:
        return q * math.log(z) + 2 * z - (q - 1) * math.log(2) - math.lgamma(q + 1)

    for z in (0.1, 0.7, 1.5, 4.0):
        p = expsum.points_for(z)
        assert log_bound(z, p) <= math.log(expsum.TRUNCATION_TOL) < log_bound(z, p - 1)
    assert expsum.points_for(0.0) == 1
    assert expsum.points_for(expsum.PIECE_Z) <= 16


def test_fallback_where_the_fast_path_would_not_pay():
    # a wide u range times a large delta: more than MAX_PIECES pieces
    w, u, delta = inputs(2, 3072, 100, -60.0, 60.0)
    how = expsum.plan(u, delta)
    assert how.pieces > expsum.MAX_PIECES and not how.fast
    # few dimensions: q * p virtual exponents cost more than the D real ones
    w, u, delta = inputs(3, 8, 100, 0.0, 1.0)
    assert not expsum.plan(u, delta).fast
    # one point: the moments cost more than the sum itself
    w, u, delta = inputs(3, 3072, 1, 0.0, 1.0)
    assert not expsum.plan(u, delta).fast
    # auto returns exactly the direct sum there
    assert torch.equal(expsum.exp_sums(w, u, delta),
                       expsum.exp_sums(w, u, delta, method="direct"))
    # and the fast path where it pays
    w, u, delta = inputs(3, 3072, 500, 0.0, 1.0)
    how = expsum.plan(u, delta)
    assert how.fast and how.z <= expsum.PIECE_Z and how.pieces * how.points < 3072


def test_chunks_do_not_change_the_sums(monkeypatch):
    w, u, delta = inputs(9, 300, 120, 0.0, 1.0, seed=4)
    whole = expsum.exp_sums(w, u, delta, method="fast")
    direct = expsum.exp_sums(w, u, delta, method="direct")
    monkeypatch.setattr(expsum, "CHUNK_ELEMENTS", 5000)
    assert torch.allclose(expsum.exp_sums(w, u, delta, method="fast"), whole,
                          rtol=1e-14, atol=0)
    assert torch.allclose(expsum.exp_sums(w, u, delta, method="direct"), direct,
                          rtol=1e-14, atol=0)


def test_bad_inputs():
    w, u, delta = inputs(2, 5, 4, 0.0, 1.0)
    with pytest.raises(BadInputError, match="shape"):
        expsum.exp_sums(w[:, :3], u, delta)
    with pytest.raises(BadInputError, match="float64"):
        expsum.exp_sums(w.float(), u, delta)
    with pytest.raises(BadInputError, match="delta >= 0"):
        expsum.exp_sums(w, u, -delta - 1)
    u[0, 0] = math.nan
    with pytest.raises(BadInputError, match="finite u"):
        expsum.exp_sums(w, u, delta)
