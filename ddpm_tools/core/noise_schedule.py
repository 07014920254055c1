"""Noise schedules: beta_t for t = 1..T and alpha_bar_t = prod_{i<=t} (1 - beta_i).

Arrays are indexed by the integer time t in {0, ..., T}: ``betas[0] = 0`` is a
placeholder so that ``betas[t]`` is beta_t, and ``alpha_bar[0] = 1`` (x_0 is data).
All tables are float64 ("Use float64 for accuracy", improved-diffusion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ddpm_tools.errors import BadInputError

ScheduleName = Literal["linear", "cosine", "explicit"]
SCHEDULE_NAMES: tuple[str, ...] = ("linear", "cosine", "explicit")

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal 2021, eq. (17)
COSINE_MAX_BETA = 0.999  # clip of beta_t, Nichol & Dhariwal 2021, Sec. 3.2
MAX_T = 100_000  # the largest number of diffusion steps accepted anywhere (--T, manifests,
#   cost tables): 100x the usual T = 1000; a cost table at this T already holds 80 GB


def linear_betas(T: int) -> np.ndarray:
    """DDPM's linear betas, 1e-4..0.02 at T = 1000, scaled by 1000/T as improved-diffusion.

    Ho et al. 2020, Sec. 4; improved-diffusion ``get_named_beta_schedule("linear")``.
    Returns ``[T]`` float64 (beta_1..beta_T).
    """
    _check_T(T)
    scale = 1000.0 / T
    if scale * 0.02 >= 1.0:
        raise BadInputError(
            f"the linear schedule needs T >= 21 (its last beta, 20/T, must stay below 1; got "
            f"T = {T}); use a larger --T or --schedule cosine"
        )
    return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)


def cosine_betas(T: int, max_beta: float = COSINE_MAX_BETA) -> np.ndarray:
    """Cosine betas of Nichol & Dhariwal 2021, eq. (17): beta_t = 1 - f(t/T)/f((t-1)/T).

    f(u) = cos(((u + s)/(1 + s)) * pi/2)^2 with s = 0.008, each beta clipped at
    ``max_beta``. Returns ``[T]`` float64 (beta_1..beta_T).
    """
    _check_T(T)

    def f(u: float) -> float:
        return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    return np.array(
        [min(1.0 - f(t / T) / f((t - 1) / T), max_beta) for t in range(1, T + 1)],
        dtype=np.float64,
    )


def _check_T(T: int) -> None:
    if int(T) != T or T < 2:
        raise BadInputError(f"T must be an integer >= 2 (got {T}); pass a larger --T")
    if T > MAX_T:
        raise BadInputError(f"T = {T} is above the limit of {MAX_T:,} diffusion steps; pass "
                            f"--T {MAX_T} or less")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A diffusion's noise schedule, indexed by t in {0, ..., T}.

    Fields:
        betas: ``[T+1]`` float64; ``betas[0] = 0`` (unused), ``betas[t]`` = beta_t in (0, 1).
        name: "linear", "cosine" or "explicit" (an array given by the user).
    Derived (float64, ``[T+1]``): ``log_alpha_bar`` (log1p sums, stable for small
    beta), ``alpha_bar`` with ``alpha_bar[0] = 1``.
    """

    betas: np.ndarray
    name: str = "explicit"
    log_alpha_bar: np.ndarray = field(init=False, repr=False)
    alpha_bar: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 3:
            raise BadInputError(
                f"betas must be a 1-D array of length T+1 >= 3 (got shape {betas.shape})"
            )
        if betas.shape[0] - 1 > MAX_T:
            raise BadInputError(f"the schedule has T = {betas.shape[0] - 1} steps, above the "
                                f"limit of {MAX_T:,}; use at most {MAX_T} steps")
        if betas[0] != 0.0:
            raise BadInputError("betas[0] must be 0: index t = 0 is the data, it has no beta")
        b = betas[1:]
        bad = np.flatnonzero(~((b > 0) & (b < 1)))
        if bad.size:
            t = int(bad[0]) + 1
            raise BadInputError(
                f"beta_{t} = {b[bad[0]]!r} is outside (0, 1); every beta_t for t = 1..T "
                "must be positive and below 1"
            )
        log_ab = np.concatenate([[0.0], np.cumsum(np.log1p(-b))])
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "log_alpha_bar", log_ab)
        object.__setattr__(self, "alpha_bar", np.exp(log_ab))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.shape[0] - 1)

    def check_t(self, t: np.ndarray | int, what: str = "t") -> np.ndarray:
        """``t`` as an int64 array, each in [1, T], else a clear error."""
        ta = np.asarray(t)
        if ta.size and (not np.issubdtype(ta.dtype, np.integer)):
            if not np.all(ta == np.round(ta)):
                raise BadInputError(f"{what} must be integers in [1, {self.T}]")
        ta = ta.astype(np.int64)
        if ta.size and (ta.min() < 1 or ta.max() > self.T):
            bad = ta[(ta < 1) | (ta > self.T)].flat[0]
            raise BadInputError(f"{what} = {bad} is outside [1, T] with T = {self.T}")
        return ta

    def to_spec(self) -> dict[str, object]:
        """JSON form for manifests: the name, T, and the explicit betas (beta_1..beta_T)."""
        return {"name": self.name, "T": self.T, "betas": self.betas[1:].tolist()}


def make_schedule(
    name: str, T: int | None = None, betas: np.ndarray | list[float] | None = None
) -> NoiseSchedule:
    """Build a schedule by name: "linear" or "cosine" with ``T``, or "explicit" with
    ``betas`` = [beta_1, ..., beta_T]."""
    if name == "linear":
        if T is None:
            raise BadInputError("the linear schedule needs T")
        b = linear_betas(T)
    elif name == "cosine":
        if T is None:
            raise BadInputError("the cosine schedule needs T")
        b = cosine_betas(T)
    elif name == "explicit":
        if betas is None:
            raise BadInputError("an explicit schedule needs its betas array")
        b = np.asarray(betas, dtype=np.float64)
        if T is not None and b.shape != (T,):
            raise BadInputError(f"explicit betas have shape {b.shape}, expected ({T},)")
    else:
        raise BadInputError(
            f"unknown noise schedule {name!r}; choose one of linear, cosine, explicit"
        )
    return NoiseSchedule(np.concatenate([[0.0], b]), name=name)


def schedule_from_spec(spec: dict[str, object]) -> NoiseSchedule:
    """Inverse of :meth:`NoiseSchedule.to_spec`; the stored betas are authoritative."""
    betas = spec.get("betas")
    if not isinstance(betas, list):
        raise BadInputError("the schedule entry has no 'betas' list")
    if not all(isinstance(b, float | int) and not isinstance(b, bool) for b in betas):
        raise BadInputError("the schedule's 'betas' must all be numbers")
    T = spec.get("T", len(betas))
    if not isinstance(T, int) or isinstance(T, bool) or T != len(betas):
        raise BadInputError(f"the schedule's T = {T!r} does not match its {len(betas)} betas; "
                            "T must be the integer count of betas")
    try:
        arr = np.asarray(betas, np.float64)
    except OverflowError:
        raise BadInputError("the schedule's 'betas' hold a number too large for float64"
                            ) from None
    return NoiseSchedule(np.concatenate([[0.0], arr]), name=str(spec.get("name", "explicit")))
