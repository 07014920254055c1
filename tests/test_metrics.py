"""ddpm_tools.metrics: distances, two-sample statistics and the digits classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from ddpm_tools.data.digits import load_digits_split
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.metrics import distances, two_sample
from ddpm_tools.metrics.classifier import (
    ASSET_PATH,
    N_FEATURES,
    ClassifierTrainConfig,
    classifier_accuracy,
    digits_features,
    load_digits_classifier,
    train_digits_classifier,
)

# ---------------------------------------------------------------- Frechet distance


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_closed_form_diagonal() -> None:
    """Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = distances.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-12)


def test_frechet_closed_form_general_matches_scipy_sqrtm() -> None:
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the classic (non-symmetric) route
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert distances.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)


def test_frechet_identical_sets_is_zero_and_shift_adds_squared_norm() -> None:
    rng = np.random.default_rng(1)
    f = rng.standard_normal((500, 16))
    assert distances.frechet_distance_features(f, f) < 1e-9
    # translating every feature by v only moves the mean: d^2 = |v|^2
    v = np.full(16, 0.5)
    assert distances.frechet_distance_features(f, f + v) == pytest.approx(v @ v, rel=1e-8)


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(BadInputError):
        distances.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------- KID


def test_kid_estimate_is_the_unbiased_u_statistic() -> None:
    """Against an explicit double loop over all pairs (Gretton et al. 2012, Lemma 6)."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((23, 5)), rng.standard_normal((17, 5)) + 0.3

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / 5 + 1) ** 3)

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    want = xx + yy - 2 * xy
    value, se = distances.kid(x, y, np.random.default_rng(0))
    assert value == pytest.approx(want, rel=1e-10)
    assert distances.mmd2_unbiased_poly(x, y) == pytest.approx(want, rel=1e-10)
    assert se > 0


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted() -> None:
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((400, 32)))
    y_same = np.abs(rng.standard_normal((300, 32)))
    y_shift = np.abs(rng.standard_normal((300, 32)) + 0.5)
    kid_same, se_same = distances.kid(x, y_same, np.random.default_rng(0))
    kid_shift, se_shift = distances.kid(x, y_shift, np.random.default_rng(0))
    assert abs(kid_same) < 3 * se_same
    assert kid_shift > 5 * se_shift
    assert kid_shift > 10 * abs(kid_same)


def test_kid_seed_moves_only_the_standard_error() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((60, 4)), rng.standard_normal((50, 4))
    a = distances.kid(x, y, np.random.default_rng(0))
    assert distances.kid(x, y, np.random.default_rng(0)) == a
    b = distances.kid(x, y, np.random.default_rng(1))
    assert b[0] == pytest.approx(a[0], rel=1e-12)
    assert b[1] != a[1]


# ---------------------------------------------------------------- precision / recall


def test_knn_radii_match_brute_force() -> None:
    rng = np.random.default_rng(5)
    f = rng.standard_normal((40, 3))
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    want = np.sort(d2, axis=1)[:, 3]  # column 0 is the point itself
    np.testing.assert_allclose(distances.knn_radii(f, 3), want, rtol=1e-9, atol=1e-12)


def test_precision_recall_identical_disjoint_and_half() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 8))
    assert distances.precision_recall(x, x) == (1.0, 1.0)
    far = x + 100.0
    assert distances.precision_recall(x, far) == (0.0, 0.0)
    # half the samples copy reference points, half are far away: precision is 1/2, and
    # recall is at least the half of the reference that is copied, but not all of it
    half = np.concatenate([x[:100], far[:100]])
    precision, recall = distances.precision_recall(x, half)
    assert precision == pytest.approx(0.5)
    assert 0.5 <= recall < 1.0


# ---------------------------------------------------------------- two-sample statistics


def test_mmd_rbf_and_energy_match_explicit_loops() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((15, 2)), rng.standard_normal((11, 2)) + 0.4
    h = 0.7

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-np.sum((a - b) ** 2) / (2 * h * h)))

    def d(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.sum((a - b) ** 2)))

    def u(f: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
          same: bool) -> float:
        pairs = [(i, j) for i in range(len(a)) for j in range(len(b)) if not (same and i == j)]
        return sum(f(a[i], b[j]) for i, j in pairs) / len(pairs)

    want_mmd = u(k, x, x, True) + u(k, y, y, True) - 2 * u(k, x, y, False)
    want_energy = 2 * u(d, x, y, False) - u(d, x, x, True) - u(d, y, y, True)
    mmd2, energy = two_sample.mmd2_rbf_and_energy(x, y, (h, 2 * h))
    assert mmd2[0] == pytest.approx(want_mmd, rel=1e-10)
    assert energy == pytest.approx(want_energy, rel=1e-10)


def test_wasserstein1_1d_matches_scipy() -> None:
    rng = np.random.default_rng(8)
    u, v = rng.standard_normal((3, 50)), rng.standard_normal((3, 31)) * 2 + 1
    want = [scipy.stats.wasserstein_distance(u[p], v[p]) for p in range(3)]
    np.testing.assert_allclose(two_sample.wasserstein1_1d(u, v), want, rtol=1e-10)


def test_sliced_w1_of_a_translation_is_mean_abs_projection() -> None:
    """y = x + v: every projected W1 is exactly |theta . v|."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 2))
    v = np.array([0.6, -0.8])
    theta = np.random.default_rng(0).standard_normal((two_sample.SW_PROJECTIONS, 2))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    want = np.mean(np.abs(theta @ v))
    got = two_sample.sliced_wasserstein1(x, x + v, np.random.default_rng(0))
    assert got == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(2 / np.pi, rel=0.1)  # E|cos| |v| in 2-D


def test_two_sample_zero_ish_for_same_and_larger_for_shifted() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((800, 2))
    same, shifted = rng.standard_normal((600, 2)), rng.standard_normal((600, 2)) + 0.5
    hs = (0.2, 1.0)
    mmd_same, e_same = two_sample.mmd2_rbf_and_energy(x, same, hs)
    mmd_shift, e_shift = two_sample.mmd2_rbf_and_energy(x, shifted, hs)
    assert np.all(np.abs(mmd_same) < 0.005)
    assert np.all(mmd_shift > 10 * np.abs(mmd_same))
    assert abs(e_same) < 0.01 and e_shift > 10 * abs(e_same)
    sw_same = two_sample.sliced_wasserstein1(x, same, np.random.default_rng(0))
    sw_shift = two_sample.sliced_wasserstein1(x, shifted, np.random.default_rng(0))
    assert sw_same < 0.1 < sw_shift


def test_two_sample_rejects_bad_input() -> None:
    with pytest.raises(BadInputError):
        two_sample.mmd2_rbf(np.zeros((5, 2)), np.zeros((5, 3)), (1.0,))
    with pytest.raises(BadInputError):
        two_sample.mmd2_rbf(np.zeros((5, 2)), np.zeros((5, 2)), (0.0,))
    with pytest.raises(BadInputError):
        two_sample.energy_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))


# ---------------------------------------------------------------- the digits classifier


def test_shipped_classifier_loads_with_sha_and_accuracy() -> None:
    model, info = load_digits_classifier()
    assert info.sha256 == sha256_file(ASSET_PATH)
    assert info.test_accuracy >= 0.97
    x, y = load_digits_split("test")
    assert classifier_accuracy(model, x, y) == pytest.approx(info.test_accuracy, abs=1e-12)
    f = digits_features(model, x)
    assert f.shape == (360, N_FEATURES) and f.dtype == np.float64
    assert 0.3 < np.sqrt(np.mean(f**2)) < 3.0  # features normalized to RMS ~1 on train


def test_digits_features_reject_wrong_shape() -> None:
    model, _ = load_digits_classifier()
    with pytest.raises(BadInputError, match=r"\[N, 1, 8, 8\]"):
        digits_features(model, np.zeros((4, 8, 8), np.float32))


def test_damaged_classifier_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError):
        load_digits_classifier(bad)


def test_training_is_deterministic() -> None:
    cfg = ClassifierTrainConfig(epochs=1, batch_size=512)
    (m1, a1), (m2, a2) = train_digits_classifier(3, cfg), train_digits_classifier(3, cfg)
    assert a1 == a2
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
