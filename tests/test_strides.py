"""Even and quadratic strides; validation of schedules."""

import math
from fractions import Fraction

import numpy as np
import pytest

from ddpm_tools.core.strides import check_timesteps, even_stride, quadratic_stride
from ddpm_tools.errors import BadInputError


def test_golden_values():
    assert even_stride(1000, 8).tolist() == [0, 125, 250, 375, 500, 625, 750, 875, 1000]
    assert even_stride(10, 4).tolist() == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round half up
    assert quadratic_stride(1000, 4).tolist() == [0, 63, 250, 563, 1000]
    # 10 (i/8)^2 rounds to 0, 0, 1, 1, 3, 4, 6, 8, 10: crowded steps move to the next free t
    assert quadratic_stride(10, 8).tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 10]


def test_strides_are_schedules_for_every_budget():
    for T in range(1, 70):
        for K in range(1, T + 1):
            i = np.arange(K + 1)
            e = even_stride(T, K)
            q = quadratic_stride(T, K)
            for tau in (e, q):
                assert tau.dtype == np.int64 and tau.size == K + 1
                assert np.array_equal(check_timesteps(tau, T), tau)
            assert np.all(np.abs(e - T * i / K) <= 0.5)
            raw = np.array([math.floor(Fraction(T * j * j, K * K) + Fraction(1, 2))
                            for j in range(K + 1)])  # exact round-half-up of T (i/K)^2
            assert np.all(q >= raw)  # only ever moved later, never earlier
            if np.all(np.diff(raw) > 0):
                assert np.array_equal(q, raw)  # untouched when already increasing
    assert np.array_equal(even_stride(7, 7), np.arange(8))


@pytest.mark.parametrize("stride", [even_stride, quadratic_stride])
@pytest.mark.parametrize("T,K", [(10, 11), (10, 0), (0, 1)])
def test_strides_reject_impossible_budgets(stride, T, K):
    with pytest.raises(BadInputError):
        stride(T, K)


@pytest.mark.parametrize("tau,message", [
    ([5, 10], "start at 0"),
    ([0, 4, 4, 10], "strictly increase, but tau_2 = 4 follows tau_1 = 4"),
    ([0, 4, 3, 10], "strictly increase"),
    ([0, 11], "beyond T = 10"),
    ([0, 5], "must end at T = 10"),
    ([0], "at least 2"),
    ([[0, 10]], "at least 2"),
    ([0, 2.5, 10], "integers"),
    (["0", "10"], "integers"),
])
def test_check_timesteps_errors(tau, message):
    with pytest.raises(BadInputError, match=message):
        check_timesteps(tau, 10)


def test_check_timesteps_truncated_and_float_integers():
    assert check_timesteps([0, 3, 7], 10, truncated_ok=True).tolist() == [0, 3, 7]
    out = check_timesteps(np.array([0.0, 5.0, 10.0]), 10)
    assert out.dtype == np.int64 and out.tolist() == [0, 5, 10]
