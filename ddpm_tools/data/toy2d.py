"""The 2-D toy sets of FFJORD and the exact log-densities of two of them.

Definitions follow Grathwohl et al. 2019, "FFJORD" (arXiv 1810.01367), code
``lib/toy_data.py`` (``inf_train_gen``); the scikit-learn generators it calls
(``make_moons``, ``make_swiss_roll``) are written out here. Every sampler takes an
explicit ``np.random.Generator``, computes in float64 and returns ``[n, 2]`` float32
with its rows in random order.

Exact densities (nats, float64) exist for:
    8gaussians    p(x) = (1/8) sum_k N(x; mu_k, sigma^2 I), mu_k = 4 (cos k pi/4, sin k pi/4)
                  / 1.414, sigma = 0.5 / 1.414.
    checkerboard  uniform on 8 squares of side 2 in [-4, 4)^2 (area 32): log p = -log 32
                  on the support, -inf off it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ddpm_tools.errors import BadInputError

TOY_NAMES: tuple[str, ...] = (
    "8gaussians",
    "checkerboard",
    "moons",
    "swissroll",
    "pinwheel",
    "2spirals",
)
DENSITY_NAMES: tuple[str, ...] = ("8gaussians", "checkerboard")
DEFAULT_N = {"train": 20_000, "test": 5_000}  # points per split when n is not given
_STREAM = {"train": 0, "test": 1}  # spawn key of each split's random stream

FFJORD_SHRINK = 1.414  # FFJORD divides 8gaussians by 1.414 (not exactly sqrt 2)
GAUSS8_RADIUS = 4.0 / FFJORD_SHRINK  # radius of the circle of the 8 centers
GAUSS8_STD = 0.5 / FFJORD_SHRINK  # per-coordinate std of each component
CHECKER_SCALE = 2.0  # side of one square (unit squares scaled by 2)
CHECKER_HALF_WIDTH = 2 * CHECKER_SCALE  # support inside [-4, 4)^2
CHECKER_LOG_DENSITY = -math.log(8 * CHECKER_SCALE**2)  # uniform on area 32


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream of ``(seed, split)``: train and test streams are independent."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM[split],)))


def gauss8_centers() -> np.ndarray:
    """The 8 mixture means ``[8, 2]`` float64 on a circle of radius 4 / 1.414."""
    angles = np.arange(8) * (np.pi / 4)
    return GAUSS8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(8, size=n)
    return gauss8_centers()[idx] + GAUSS8_STD * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    # FFJORD: x1 ~ U[-2, 2); x2 ~ U[0, 1) or U[-2, -1), shifted by 1 on odd columns.
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2 + np.floor(x1) % 2
    return CHECKER_SCALE * np.stack([x1, x2], axis=1)


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn make_moons(n, noise=0.1): two half circles, then FFJORD's x * 2 + (-1, -0.2).
    n_out = n // 2
    t_out = np.linspace(0, np.pi, n_out)
    t_in = np.linspace(0, np.pi, n - n_out)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], axis=1)
    x = np.concatenate([outer, inner]) + 0.1 * rng.standard_normal((n, 2))
    return rng.permutation(x * 2 + np.array([-1.0, -0.2]))


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    # sklearn make_swiss_roll(n, noise=1.0) keeping coordinates (x, z), FFJORD's / 5.
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + rng.standard_normal((n, 2))
    return x / 5


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    # 5 arms; radial std 0.3, tangential std 0.1, rate 0.25 (FFJORD "pinwheel").
    labels = np.arange(n) % 5
    features = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angles = labels * (2 * np.pi / 5) + 0.25 * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    # FFJORD's einsum("ti,tij->tj") with rotations [[cos, -sin], [sin, cos]]
    x = np.stack(
        [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos],
        axis=1,
    )
    return 2 * rng.permutation(x)


def _two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    # Angle sqrt(U) * 540 degrees; uniform jitter 0.5; second arm mirrored; / 3; noise 0.1.
    m = (n + 1) // 2
    t = np.sqrt(rng.random(m)) * 540 * (2 * np.pi) / 360
    arm = np.stack(
        [-np.cos(t) * t + rng.random(m) * 0.5, np.sin(t) * t + rng.random(m) * 0.5], axis=1
    )
    x = np.concatenate([arm, -arm]) / 3
    x += 0.1 * rng.standard_normal(x.shape)
    return rng.permutation(x)[:n]


_SAMPLERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "moons": _moons,
    "swissroll": _swissroll,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
}


def sample_toy(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` points of the toy set ``name``: ``[n, 2]`` float32."""
    if name not in _SAMPLERS:
        raise BadInputError(f"unknown 2-D data set {name!r}; use one of {', '.join(TOY_NAMES)}")
    return _SAMPLERS[name](n, rng).astype(np.float32)


def has_true_density(name: str) -> bool:
    """True if :func:`true_log_density` knows ``name`` (8gaussians, checkerboard)."""
    return name in DENSITY_NAMES


def true_log_density(name: str, x: np.ndarray) -> np.ndarray:
    """Exact log-density in nats of ``x: [N, 2]`` under the toy set ``name``; ``[N]`` float64.

    8gaussians: log (1/8) sum_k N(x; mu_k, sigma^2 I) by a stable log-sum-exp.
    checkerboard: -log 32 on the support, -inf off it (the support is the half-open
    squares the sampler draws from, inside [-4, 4)^2).
    """
    if not has_true_density(name):
        raise BadInputError(
            f"data set {name!r} has no exact density; only {', '.join(DENSITY_NAMES)} do"
        )
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise BadInputError(f"true_log_density needs points of shape [N, 2] (got {x.shape})")
    if name == "8gaussians":
        d2 = ((x[:, None, :] - gauss8_centers()[None, :, :]) ** 2).sum(axis=2)  # [N, 8]
        logits = -d2 / (2 * GAUSS8_STD**2)
        top = logits.max(axis=1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return lse - math.log(8) - math.log(2 * math.pi * GAUSS8_STD**2)
    u = x / CHECKER_SCALE
    inside = np.all((u >= -2) & (u < 2), axis=1)
    even = (np.floor(u[:, 0]) + np.floor(u[:, 1])) % 2 == 0
    return np.where(inside & even, CHECKER_LOG_DENSITY, -np.inf)
