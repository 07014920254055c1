"""Evaluation-time reverse variances: fixed, Analytic-DPM's analytic variance, and the
train-MSE variance (``--variance``).

Both statistic-based variances have the form
    sigma^2(s, t) = beta_tilde_{t|s} + coef_x0(s, t)^2 c_t                  (s >= 1)
where c_t is a per-dimension estimate of E Var[x_0 | x_t] that depends on t alone, so
each step's KL stays a closed form of (s, t) and the DP over the table stays exact:

* **analytic** (Bao et al. 2022, "Analytic-DPM", Theorem 1 for DDPM, with the clipping of
  their released code): c_t = clip((1 - alpha_bar_t)/alpha_bar_t (1 - Gamma_t), 0, 1)
  with Gamma_t = E ||eps_hat(x_t, t)||^2 / D. Since coef_x0^2 (1 - alpha_bar_t)/alpha_bar_t
  = beta_{t|s}^2 / (alpha_{t|s} (1 - alpha_bar_t)), this is their
  sigma^2 = beta_tilde + beta^2 / (alpha_{t|s} (1 - alpha_bar_t)) (1 - Gamma_t).
* **mse**: c_t = m_t / D with m_t = E ||x_0 - x0_hat(x_t)||^2 (the clipped x0_hat of the
  mean). For a fixed mean the expected KL of the step is, in sigma^2 (Ho et al. 2020,
  eq. (8) with skip coefficients),
      f(sigma^2) = D/2 (log sigma^2 + beta_tilde / sigma^2) + coef_x0^2 m_t / (2 sigma^2) + const,
  f'(sigma^2) = (D sigma^2 - D beta_tilde - coef_x0^2 m_t) / (2 sigma^4) = 0 gives
  sigma^2 = beta_tilde + coef_x0^2 m_t / D, the unique minimum (f' < 0 below, > 0 above).
  So on the examples it was fitted on, no step s >= 1 costs more than under any other
  isotropic variance (fixed_small, fixed_large, analytic).

Decoder (t -> 0; its variance depends on t = tau_1 alone, so the DP stays exact):
* analytic: sigma^2 = c_t, Theorem 1 at s = 0 (beta_tilde_{t|0} = 0, coef_x0 = 1): the
  estimate of E Var[x_0 | x_t] itself; at t = 1 exactly Analytic-DPM's last step. Where
  the clip made c_t = 0 (Gamma_t >= 1) the fixed_small decoder variance small(t) is used
  instead of a zero variance (a reported clip).
* mse: sigma^2 = max(m_t / D, small(t)), the mse of x0_hat (the decoder's own mean) clipped
  below by the fixed_small decoder variance (:func:`decoder_log_variance_bounds`).

A statistic that is non-finite (a badly fitted network) is replaced by the upper clip
(c_t = 1, the variance of data in [-1, 1] at most); such t and those with Gamma_t > 1 are
reported (``StepVariance.clipped``).
Statistics arrays are ``[T+1]`` float64 (entry 0 unused).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_tools.core.diffusion import decoder_log_variance_bounds, posterior_coeffs
from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.errors import BadInputError

VARIANCES: tuple[str, ...] = ("trained", "fixed_small", "fixed_large", "analytic", "mse")
STAT_VARIANCES: tuple[str, ...] = ("analytic", "mse")  # need gamma / mse statistics
MAX_X0_VARIANCE = 1.0  # upper clip of c_t (Bao et al.'s released code clips to [0, 1])


def resolve_variance(requested: str | None, trained: str) -> str:
    """The variance kind actually used: ``trained`` (or None) -> the set's own type.

    ``requested`` may also name the set's own type (``learned_range`` as schedule files
    record it for a learned-range set).
    """
    if requested is None or requested == "trained" or requested == trained:
        return trained
    if requested == "learned_range":
        raise BadInputError(f"the learned_range variance needs a set trained with it (this one "
                            f"was trained with {trained}); choose --variance trained, "
                            "fixed_small, fixed_large, analytic or mse")
    if requested not in VARIANCES:
        raise BadInputError(f"unknown --variance {requested!r}; choose one of "
                            + ", ".join(VARIANCES))
    return requested


def analytic_x0_variance(schedule: NoiseSchedule, gamma: np.ndarray
                         ) -> tuple[np.ndarray, list[int]]:
    """c_t = clip((1 - alpha_bar_t)/alpha_bar_t (1 - Gamma_t), 0, 1), ``[T+1]``; and the
    times t >= 1 where Gamma_t > 1 (c_t clipped to 0) or Gamma_t is not finite (c_t = 1):
    a badly fitted network. The upper clip at large t is routine and not reported.

    Bao et al. 2022, Theorem 1 / their ``_e_cov_x0`` with ``clip_cov_x0``.
    """
    lab = schedule.log_alpha_bar
    ratio = np.expm1(-lab)  # (1 - alpha_bar_t) / alpha_bar_t
    with np.errstate(invalid="ignore", over="ignore"):
        raw = ratio * (1.0 - np.asarray(gamma, dtype=np.float64))
    return _clip(raw)


def mse_x0_variance(mse: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """c_t = m_t / D (``mse`` is already per dimension), ``[T+1]``; non-finite -> 1, reported."""
    raw = np.asarray(mse, dtype=np.float64)
    bad = ~np.isfinite(raw)
    bad[0] = False
    return np.where(np.isfinite(raw), np.maximum(raw, 0.0), MAX_X0_VARIANCE), \
        np.flatnonzero(bad).tolist()


def _clip(raw: np.ndarray) -> tuple[np.ndarray, list[int]]:
    c = np.where(np.isfinite(raw), np.clip(raw, 0.0, MAX_X0_VARIANCE), MAX_X0_VARIANCE)
    changed = ~np.isfinite(raw) | (raw < 0.0)  # the upper clip is routine at large t
    changed[0] = False
    return c, np.flatnonzero(changed).tolist()


@dataclass(frozen=True)
class StepVariance:
    """The reverse variance of every step t -> s, by kind (see the module docstring).

    ``kind``: fixed_small, fixed_large, learned_range (the network's v) or, with
    ``x0_var`` ``[T+1]`` (c_t), analytic / mse. ``clipped``: times t where c_t was clipped.
    """

    kind: str
    x0_var: np.ndarray | None = None
    clipped: tuple[int, ...] = ()

    @classmethod
    def fit(cls, kind: str, schedule: NoiseSchedule, gamma: np.ndarray | None,
            mse: np.ndarray | None) -> StepVariance:
        """The variance of ``kind`` from per-t statistics (``[T+1]``; used by analytic/mse)."""
        if kind == "analytic":
            if gamma is None:
                raise BadInputError("the analytic variance needs the gamma statistics")
            c, clipped = analytic_x0_variance(schedule, gamma)
        elif kind == "mse":
            if mse is None:
                raise BadInputError("the mse variance needs the mse statistics")
            c, clipped = mse_x0_variance(mse)
        else:
            return cls(kind)
        return cls(kind, c, tuple(clipped))

    def log_sigma2(self, schedule: NoiseSchedule, s: np.ndarray, t: int) -> np.ndarray:
        """log sigma^2 of the isotropic steps t -> s, s >= 1: ``[m]`` float64."""
        c = posterior_coeffs(schedule, s, t)
        if self.kind == "fixed_small":
            return c.log_beta_tilde
        if self.kind == "fixed_large":
            return c.log_beta
        if self.x0_var is None:
            raise BadInputError(f"variance {self.kind} has no isotropic closed form")
        return np.log(c.beta_tilde + c.coef_x0**2 * self.x0_var[t])

    def decoder_log_var(self, schedule: NoiseSchedule, t: int) -> float:
        """log sigma^2 of the decoder p(x_0 | x_t) (isotropic kinds); depends on t alone."""
        small, large = (float(x) for x in decoder_log_variance_bounds(schedule, t))
        if self.kind == "fixed_small":
            return small
        if self.kind == "fixed_large":
            return large
        if self.x0_var is None:
            raise BadInputError(f"variance {self.kind} has no isotropic closed form")
        c = float(self.x0_var[t])
        if self.kind == "analytic":
            return float(np.log(c)) if c > 0.0 else small
        return max(float(np.log(c)), small) if c > 0.0 else small
