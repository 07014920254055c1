"""Two-sample distances for low-dimensional continuous data (the 2-D toy sets).

Pure functions on float64 numpy arrays ``x: [m, D]`` (reference) and ``y: [n, D]``
(samples): unbiased MMD^2 with Gaussian (RBF) kernels at several bandwidths, the sliced
Wasserstein-1 distance and the energy distance. Pairwise sums are accumulated in row
blocks, so memory stays ~_ROW_BLOCK * max(m, n) floats for any set size.
"""

from __future__ import annotations

import numpy as np

from ddpm_tools.errors import BadInputError

SW_PROJECTIONS = 256
"""Default number of random directions the sliced Wasserstein-1 distance averages over."""

_ROW_BLOCK = 1024
"""Rows per block of a pairwise-distance matrix."""

_DIRECT_MAX_DIM = 8
"""Up to this dimension squared distances are summed coordinate by coordinate."""


def _check_points(p: np.ndarray, what: str) -> np.ndarray:
    """``p`` as float64 ``[N, D]`` with ``N >= 2`` finite rows."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2:
        raise BadInputError(f"{what} must be a [N, D] array with N >= 2 (got shape {p.shape})")
    if not np.all(np.isfinite(p)):
        raise BadInputError(f"{what} contains NaN or infinite values; check the samples")
    return p


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _check_points(x, "reference points"), _check_points(y, "sample points")
    if x.shape[1] != y.shape[1]:
        raise BadInputError(f"point dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    return x, y


def _kernel_block(d2: np.ndarray, bandwidths: np.ndarray) -> tuple[np.ndarray, float]:
    """Sums of exp(-d2 / (2 h^2)) for each h ``[H]`` and of sqrt(d2) over a block ``d2``."""
    rbf = np.array([np.exp(d2 * (-0.5 / (h * h))).sum() for h in bandwidths])
    return rbf, float(np.sqrt(d2).sum())


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[m, n]`` of the rows of ``a: [m, D]`` and ``b: [n, D]``.

    Coordinate by coordinate for small D (exact and faster than a rank-D product), by the
    Gram identity otherwise.
    """
    if a.shape[1] > _DIRECT_MAX_DIM:
        return np.clip((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T),
                       0.0, None)
    d2 = np.zeros((a.shape[0], b.shape[0]))
    for k in range(a.shape[1]):
        diff = a[:, k, None] - b[None, :, k]
        d2 += diff * diff
    return d2


def _pair_sums(a: np.ndarray, b: np.ndarray,
               bandwidths: np.ndarray) -> tuple[np.ndarray, float]:
    """Sums over all pairs (i, j) of exp(-|a_i - b_j|^2 / (2 h^2)) for each h, and of |a_i - b_j|.

    a: [m, D], b: [n, D], bandwidths: [H]; returns ([H] float64, float).
    """
    rbf, dist = np.zeros(bandwidths.shape[0]), 0.0
    for i in range(0, a.shape[0], _ROW_BLOCK):
        r, d = _kernel_block(_sq_dists(a[i:i + _ROW_BLOCK], b), bandwidths)
        rbf, dist = rbf + r, dist + d
    return rbf, dist


def within_sums(a: np.ndarray, bandwidths: np.ndarray) -> tuple[np.ndarray, float]:
    """Sums over pairs i != j of a set ``a: [m, D]`` with itself: RBF ``[H]`` and distance.

    These are the only O(m^2) terms of a reference set, worth caching across evaluations.

    Row block [i, i+B) is paired with rows i.. only: the square part counts both orders
    itself, the rest is counted twice; the diagonal (k = 1, distance 0) is removed.
    """
    rbf, dist = np.zeros(bandwidths.shape[0]), 0.0
    for i in range(0, a.shape[0], _ROW_BLOCK):
        d2 = _sq_dists(a[i:i + _ROW_BLOCK], a[i:])
        width = min(_ROW_BLOCK, a.shape[0] - i)
        r_sq, d_sq = _kernel_block(d2[:, :width], bandwidths)
        r_rest, d_rest = _kernel_block(d2[:, width:], bandwidths)
        rbf, dist = rbf + r_sq + 2.0 * r_rest, dist + d_sq + 2.0 * d_rest
    return rbf - a.shape[0], dist


def mmd2_rbf_and_energy(
    x: np.ndarray, y: np.ndarray, bandwidths: tuple[float, ...],
    x_within: tuple[np.ndarray, float] | None = None,
) -> tuple[np.ndarray, float]:
    """Unbiased MMD^2 at each RBF bandwidth, and the energy distance, in one pass.

    MMD_u^2 (Gretton et al. 2012, JMLR, Lemma 6) with k_h(a, b) = exp(-|a - b|^2 / (2 h^2)):
        sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 mean_{i,j} k(x_i,y_j).
    Energy distance (Szekely & Rizzo 2013, "Energy statistics: a class of statistics based
    on distances"), the same U-statistic form with the distance: 2 E|X-Y| - E|X-X'| - E|Y-Y'|.
    Both are unbiased, so either can be slightly negative when x and y share a distribution.
    x: [m, D], y: [n, D]; ``x_within``: :func:`within_sums` of x for these bandwidths, if
    already known. Returns (mmd2 [H] float64, energy distance).
    """
    x, y = _check_pair(x, y)
    h = np.asarray(bandwidths, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or np.any(h <= 0):
        raise BadInputError(f"RBF bandwidths must be positive numbers (got {bandwidths})")
    m, n = x.shape[0], y.shape[0]
    kxx, dxx = within_sums(x, h) if x_within is None else x_within
    kyy, dyy = within_sums(y, h)
    kxy, dxy = _pair_sums(x, y, h)
    mmd2 = kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)
    energy = 2.0 * dxy / (m * n) - dxx / (m * (m - 1)) - dyy / (n * (n - 1))
    return mmd2, float(energy)


def mmd2_rbf(x: np.ndarray, y: np.ndarray, bandwidths: tuple[float, ...]) -> np.ndarray:
    """Unbiased MMD^2 ``[H]`` with RBF kernels of the given bandwidths (see above)."""
    return mmd2_rbf_and_energy(x, y, bandwidths)[0]


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo 2013)."""
    return mmd2_rbf_and_energy(x, y, (1.0,))[1]


def wasserstein1_1d(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """W1 between the empirical distributions of each row pair: u: [P, m], v: [P, n] -> [P].

    In one dimension W1 = integral |F_u(t) - F_v(t)| dt (Vallender 1973), evaluated exactly
    on the merged sorted support, so m and n may differ.
    """
    u, v = np.sort(u, axis=1), np.sort(v, axis=1)
    out = np.empty(u.shape[0])
    for p in range(u.shape[0]):
        support = np.sort(np.concatenate([u[p], v[p]]))
        widths = np.diff(support)
        cdf_u = np.searchsorted(u[p], support[:-1], side="right") / u.shape[1]
        cdf_v = np.searchsorted(v[p], support[:-1], side="right") / v.shape[1]
        out[p] = np.sum(np.abs(cdf_u - cdf_v) * widths)
    return out


def sliced_wasserstein1(x: np.ndarray, y: np.ndarray, generator: np.random.Generator,
                        n_projections: int = SW_PROJECTIONS) -> float:
    """Sliced Wasserstein-1 distance (Rabin et al. 2011; Bonneel et al. 2015).

    SW1 = E_theta W1(theta.x, theta.y) over directions theta uniform on the unit sphere,
    estimated with ``n_projections`` directions drawn from ``generator`` (normalized
    Gaussian vectors). x: [m, D], y: [n, D]; returns a float >= 0 in data units.
    """
    x, y = _check_pair(x, y)
    if n_projections < 1:
        raise BadInputError(f"n_projections must be >= 1 (got {n_projections})")
    theta = generator.standard_normal((n_projections, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    return float(wasserstein1_1d(theta @ x.T, theta @ y.T).mean())
