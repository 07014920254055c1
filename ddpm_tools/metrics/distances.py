"""Distances between two sets of feature vectors: Frechet distance, KID, precision/recall.

Pure functions on float64 numpy arrays ``[N, F]`` (one feature vector per row), in the
style of k-diffusion's ``evaluation.py``: no I/O, no feature network, randomness passed
in as a ``np.random.Generator``. ``x`` is the reference (real) set, ``y`` the samples.
"""

from __future__ import annotations

import numpy as np

from ddpm_tools.errors import BadInputError

KID_SUBSETS = 10
"""Default number of disjoint subsets of the jackknife standard error of KID."""

PR_NEIGHBOURS = 3
"""k of the k-NN manifold estimate of precision/recall (Kynkaanniemi et al. 2019 use k = 3)."""

_ROW_BLOCK = 1024
"""Rows per block of a pairwise-distance matrix, bounding memory at ~_ROW_BLOCK * N floats."""

_D2_RTOL = 1e-9
"""Relative slack on squared distances from the Gram identity (cancellation error)."""


def _check_features(f: np.ndarray, what: str, min_rows: int) -> np.ndarray:
    """``f`` as float64 ``[N, F]`` with ``N >= min_rows`` and finite entries."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise BadInputError(f"{what} must be a [N, F] feature array (got shape {f.shape})")
    if f.shape[0] < min_rows:
        raise BadInputError(f"{what} has {f.shape[0]} rows but at least {min_rows} are needed")
    if not np.all(np.isfinite(f)):
        raise BadInputError(f"{what} contains NaN or infinite values; check the features")
    return f


def gaussian_fit(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` (float64) of features ``f: [N, F]``."""
    f = _check_features(f, "features", 2)
    mu = f.mean(axis=0)
    sigma = np.atleast_2d(np.cov(f, rowvar=False))
    return mu, sigma


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix ``[F, F]`` by eigh.

    Eigenvalues below zero (round-off) are clipped, so the result is real and symmetric.
    """
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))  (Dowson & Landau 1982;
    the FID of Heusel et al. 2017, Sec. "Frechet Inception Distance"). The trace term is
    computed stably as tr((S1^(1/2) S2 S1^(1/2))^(1/2)): that matrix is symmetric PSD and
    similar to S1 S2, so its eigenvalues are real and >= 0 and no complex sqrtm is needed.
    mu: [F], sigma: [F, F]; returns a float >= 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise BadInputError(
            f"Gaussian fits do not match: means {mu1.shape}, {mu2.shape}, covariances "
            f"{s1.shape}, {s2.shape}; compute both from features of the same dimension"
        )
    s1_half = _sqrtm_psd(s1)
    middle = s1_half @ s2 @ s1_half
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    d2 = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(d2, 0.0)


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """:func:`frechet_distance` between Gaussian fits of ``x: [N, F]`` and ``y: [M, F]``."""
    return frechet_distance(*gaussian_fit(x), *gaussian_fit(y))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a, b) = (a.b / F + 1)^3, the KID kernel (Binkowski et al. 2018). [N, M]."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _poly_kernel_diag(a: np.ndarray) -> np.ndarray:
    """k(a_i, a_i) = (|a_i|^2 / F + 1)^3 for each row; ``[N]``."""
    return ((a * a).sum(1) / a.shape[1] + 1.0) ** 3


def mmd2_unbiased_poly(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of ``x: [m, F]`` and ``y: [n, F]`` under the cubic polynomial kernel.

    MMD_u^2 = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1))
              - 2 sum_{i,j} k(x_i,y_j)/(mn)     (Gretton et al. 2012, JMLR, Lemma 6).
    """
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def _block_sums(a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray,
                n_blocks: int) -> np.ndarray:
    """S[i, j] = sum of k(a_p, b_q) over a_p in subset i, b_q in subset j; ``[B, B]``.

    a: [m, F] with subset labels la: [m]; b: [n, F] with labels lb: [n]. Computed in row
    blocks so no full [m, n] kernel matrix is held.
    """
    onehot_b = np.eye(n_blocks)[lb]  # [n, B]
    out = np.zeros((n_blocks, n_blocks))
    for i in range(0, a.shape[0], _ROW_BLOCK):
        k = _poly_kernel(a[i:i + _ROW_BLOCK], b) @ onehot_b  # [rows, B]
        np.add.at(out, la[i:i + _ROW_BLOCK], k)
    return out


def kid(x: np.ndarray, y: np.ndarray, generator: np.random.Generator,
        n_subsets: int = KID_SUBSETS) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs") and its SE.

    The estimate is the unbiased MMD^2 U-statistic over all pairs (same kernel and same
    expectation as the usual average over random subsets, with lower variance). Its
    standard error is a delete-one-subset jackknife: each set is shuffled with
    ``generator`` into ``n_subsets`` disjoint subsets, the statistic theta_(-j) is
    recomputed without subset j of both sets, and SE^2 = (B-1)/B sum_j (theta_(-j) -
    mean)^2 (Efron & Stein 1981; Arvesen 1969 for U-statistics). Only the SE depends on
    ``generator``. Values can be slightly negative when the distributions are equal.
    x: [m, F], y: [n, F]; returns (kid, standard error).
    """
    x = _check_features(x, "reference features", 4)
    y = _check_features(y, "sample features", 4)
    if x.shape[1] != y.shape[1]:
        raise BadInputError(f"feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    b = max(2, min(n_subsets, x.shape[0] // 2, y.shape[0] // 2))
    lx = np.arange(x.shape[0]) % b
    ly = np.arange(y.shape[0]) % b
    lx, ly = lx[generator.permutation(lx.size)], ly[generator.permutation(ly.size)]
    sxx = _block_sums(x, lx, x, lx, b)
    syy = _block_sums(y, ly, y, ly, b)
    sxy = _block_sums(x, lx, y, ly, b)
    # remove the i = j terms k(x_i, x_i) from the within-set sums
    sxx[np.diag_indices(b)] -= np.bincount(lx, _poly_kernel_diag(x), minlength=b)
    syy[np.diag_indices(b)] -= np.bincount(ly, _poly_kernel_diag(y), minlength=b)
    cx, cy = np.bincount(lx, minlength=b), np.bincount(ly, minlength=b)

    def mmd2(keep: np.ndarray) -> float:
        m, n = cx[keep].sum(), cy[keep].sum()
        sel = np.ix_(keep, keep)
        return float(sxx[sel].sum() / (m * (m - 1)) + syy[sel].sum() / (n * (n - 1))
                     - 2.0 * sxy[sel].sum() / (m * n))

    full = mmd2(np.ones(b, dtype=bool))
    loo = np.array([mmd2(np.arange(b) != j) for j in range(b)])
    se = float(np.sqrt((b - 1) / b * np.sum((loo - loo.mean()) ** 2)))
    return full, se


def _sq_dists(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared Euclidean distances ``[N, M]`` and their round-off slack, by the Gram identity."""
    na, nb = (a * a).sum(1)[:, None], (b * b).sum(1)[None, :]
    d2 = np.clip(na + nb - 2.0 * (a @ b.T), 0.0, None)
    return d2, _D2_RTOL * (na + nb)


def knn_radii(f: np.ndarray, k: int = PR_NEIGHBOURS) -> np.ndarray:
    """Squared distance ``[N]`` from each row of ``f: [N, F]`` to its k-th nearest other row."""
    f = _check_features(f, "features", k + 1)
    out = np.empty(f.shape[0])
    for i in range(0, f.shape[0], _ROW_BLOCK):
        d2, _ = _sq_dists(f[i:i + _ROW_BLOCK], f)
        # column k of the sorted row: index 0 is the point itself (distance 0)
        out[i:i + _ROW_BLOCK] = np.partition(d2, k, axis=1)[:, k]
    return out


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of ``queries`` inside the union of balls (manifold_i, sqrt(radii_i))."""
    inside = np.empty(queries.shape[0], dtype=bool)
    for i in range(0, queries.shape[0], _ROW_BLOCK):
        d2, slack = _sq_dists(queries[i:i + _ROW_BLOCK], manifold)
        inside[i:i + _ROW_BLOCK] = (d2 <= radii[None, :] + slack).any(axis=1)
    return float(inside.mean())


def precision_recall(x: np.ndarray, y: np.ndarray,
                     k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Sec. 2).

    Each set's manifold is the union of balls around its points with radius the distance
    to the point's k-th nearest neighbour in the same set. Precision: fraction of samples
    ``y`` inside the manifold of the reference ``x`` (fidelity); recall: fraction of
    reference points inside the manifold of ``y`` (coverage). x: [m, F], y: [n, F];
    returns (precision, recall), each in [0, 1].
    """
    x = _check_features(x, "reference features", k + 1)
    y = _check_features(y, "sample features", k + 1)
    if x.shape[1] != y.shape[1]:
        raise BadInputError(f"feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    precision = _coverage(x, knn_radii(x, k), y)
    recall = _coverage(y, knn_radii(y, k), x)
    return precision, recall
