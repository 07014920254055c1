"""Stage boundaries by timestep clustering with the empirical optimal denoiser.

Zhang, Lu, Alkhouri, Ravishankar, Song & Qu 2024, "Improving Efficiency of Diffusion
Models via Multi-Stage Framework and Tailored Multi-Decoder Architectures" (CVPR),
Sec. 4.2 and Algorithm 1, cut diffusion time where the task of the ideal network
changes. The pieces, with our exact definitions:

1. The optimal denoiser over a training set {y_i} (Zhang et al., Prop. 1, eq. (4);
   Karras et al. 2022, eq. (57)): with q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I),

       E[x_0 | x_t] = sum_i w_i y_i,
       w = softmax_i( -||x_t - sqrt(ab_t) y_i||^2 / (2 (1 - ab_t)) ),

   computed in float64 with log-sum-exp. ``target="eps"`` gives eq. (4) itself,
   eps*(x_t) = (x_t - sqrt(ab_t) E[x_0 | x_t]) / sqrt(1 - ab_t). Above ``max_reference``
   examples the set is subsampled (uniformly, without replacement) and the subsample is
   the empirical distribution for everything below.
2. Draws (Algorithm 1, line 4): ``samples`` pairs (x_0^k, eps^k), x_0^k uniform from the
   reference set, eps^k ~ N(0, I); the same pair is noised at every time,
   x_t^k = sqrt(ab_t) x_0^k + sqrt(1 - ab_t) eps^k.
3. Similarity of two times (eq. (5); the distance D of Sec. 4.2): the fraction of
   coordinates on which the two outputs agree within ``eta``, averaged over the draws,

       S(t_a, t_b) = (1/K) sum_k (1/D) sum_i 1(|f_a(x_{t_a}^k) - f_b(x_{t_b}^k)|_i <= eta),

   f = E[x_0 | x_t] (``target="x0"``, default: what the authors' released code compares,
   ``interval_split/interval_split.py``) or eps* (``target="eps"``, the paper's eq. (4)).
   ``eta`` is in the units of the output: data units for x0 (images live in [-1, 1], one
   level of 8-bit data is 2/255), noise units for eps. S is computed on a grid of times
   g_0 < ... < g_{G-1} in [1, T], plus the two ends: t = 0, where f is x_0 itself (x0) or
   eps itself (eps), the exact limits, and t = T.
4. Boundaries. ``method="threshold"`` is the paper's rule (eqs. (6)-(7), Algorithm 1
   lines 8-9) on the grid: the first stage is the longest prefix whose *mean* similarity
   to t = 0 is at least ``alpha``; with 3 stages the last is the longest suffix whose mean
   similarity to t = T is at least ``alpha`` and the middle stage is the rest. With 2
   stages only eq. (6) is used (our reading; the paper states the 3-stage case). The
   random t_k of Algorithm 1 become every grid time, each seen with all draws.
   ``method="dp"`` (default) generalises to any K: the exact segmentation of the grid
   into K contiguous stages maximising within-stage similarity
   (:mod:`ddpm_tools.core.segmentation`; objective ``"ratio"`` or ``"mean"``).
5. Integer ranges: every t in [1, T] belongs to the stage of its nearest grid time
   (ties to the earlier one), so the ranges tile [1, T].

Defaults: the paper gives no values for eta and alpha; the released code uses
eta = 2/256 on images scaled to [0, 1]. Ours, eta = 0.05 (under half a level of the
17-level digits, 0.125 apart; about 6 levels of 8-bit images) and alpha = 0.9, put the
threshold rule's 3 digits stages within a few grid times of the DP's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ddpm_tools.core.noise_schedule import NoiseSchedule
from ddpm_tools.core.segmentation import OBJECTIVES, best_segmentation, segmentation_score
from ddpm_tools.data import DataSplit
from ddpm_tools.errors import BadInputError
from ddpm_tools.progress import ProgressFn, report

TARGETS: tuple[str, ...] = ("x0", "eps")  # what the optimal denoiser outputs
METHODS: tuple[str, ...] = ("dp", "threshold")  # how the stages are chosen
DEFAULT_SAMPLES = 128  # (x_0, eps) draws, K of Algorithm 1
DEFAULT_ETA = 0.05  # agreement tolerance per coordinate, in output units
DEFAULT_ALPHA = 0.9  # threshold of the paper's rule (method "threshold")
DEFAULT_GRID = 64  # grid times compared (evenly spaced from 1 to T)
DEFAULT_MAX_REFERENCE = 4096  # training examples kept for the optimal denoiser
QUERY_CHUNK = 256  # x_t rows per softmax block: the [chunk, N] weights stay small
SIM_BLOCK = 1 << 22  # output entries compared at once in the similarity matrix


@dataclass(frozen=True)
class ClusterSettings:
    """How a clustering was computed (saved next to its result)."""

    stages: int  # number of stages K
    method: str  # "dp" (exact segmentation) or "threshold" (Zhang et al. eqs. (6)-(7))
    objective: str  # segmentation objective: "ratio" or "mean" (core.segmentation)
    target: str  # denoiser output compared: "x0" (E[x_0 | x_t]) or "eps" (eq. (4))
    samples: int  # (x_0, eps) draws averaged in S
    eta: float  # per-coordinate agreement tolerance, output units
    alpha: float  # similarity threshold of method "threshold", in (0, 1]
    n_reference: int  # training examples the optimal denoiser sums over
    seed: int | None  # seed of the draws (None: a caller's generator)


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Stage boundaries of one clustering and what they were computed from."""

    ranges: tuple[tuple[int, int], ...]  # (t_lo, t_hi) per stage, inclusive, tiling [1, T]
    grid: np.ndarray  # [G] int64, the compared times, 1 <= g_0 < ... < g_{G-1} <= T
    starts: tuple[int, ...]  # grid index of each stage's first time
    similarity: np.ndarray  # [G, G] float64, S(g_a, g_b) in [0, 1]
    to_start: np.ndarray  # [G] float64, S(g_a, 0): agreement with the t = 0 limit
    to_end: np.ndarray  # [G] float64, S(g_a, T)
    objective: float  # segmentation objective of these stages (for any method)
    stage_similarity: tuple[float, ...]  # mean of S over each stage's pairs (a = b included)
    settings: ClusterSettings  # the parameters used
    T: int  # diffusion steps of the schedule

    def to_json(self) -> dict[str, object]:
        """JSON form: ranges, grid, matrices as nested lists, settings."""
        return {
            "T": self.T,
            "stages": [{"stage": k, "t_lo": lo, "t_hi": hi, "size": hi - lo + 1,
                        "grid_points": b - a, "mean_similarity": s}
                       for k, ((lo, hi), a, b, s) in enumerate(zip(
                           self.ranges, self.starts, (*self.starts[1:], self.grid.size),
                           self.stage_similarity, strict=True))],
            "objective": self.objective,
            "settings": asdict(self.settings),
            "grid": self.grid.tolist(),
            "to_start": self.to_start.tolist(),
            "to_end": self.to_end.tolist(),
            "similarity": self.similarity.tolist(),
        }


def optimal_denoiser(x_t: np.ndarray, t: int, schedule: NoiseSchedule,
                     reference: np.ndarray) -> np.ndarray:
    """E[x_0 | x_t] under the empirical distribution of ``reference`` (Karras et al. 2022,
    eq. (57); Zhang et al. 2024, eq. (4)), softmax weights by log-sum-exp in float64.

    x_t: [B, D] noisy points at time t in [1, T]; reference: [N, D] training examples.
    Returns [B, D] float64.
    """
    t = int(schedule.check_t(t))
    x = np.asarray(x_t, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or y.shape[0] < 1:
        raise BadInputError(
            f"x_t must be [B, D] and the reference set [N, D] with the same D (got "
            f"{x.shape} and {y.shape})"
        )
    sqrt_ab = math.sqrt(schedule.alpha_bar[t])
    var = -math.expm1(schedule.log_alpha_bar[t])  # 1 - alpha_bar_t, exact for small t
    y_sq = np.einsum("nd,nd->n", y, y)
    out = np.empty_like(x)
    for lo in range(0, x.shape[0], QUERY_CHUNK):
        xc = x[lo:lo + QUERY_CHUNK]
        # ||x - s y||^2 = ||x||^2 - 2 s x.y + s^2 ||y||^2, clipped at 0 against rounding
        d2 = (np.einsum("bd,bd->b", xc, xc)[:, None] - 2.0 * sqrt_ab * (xc @ y.T)
              + sqrt_ab**2 * y_sq[None, :])
        logits = -np.maximum(d2, 0.0) / (2.0 * var)
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        w /= w.sum(axis=1, keepdims=True)
        out[lo:lo + QUERY_CHUNK] = w @ y
    return out


def _output(x_t: np.ndarray, t: int, schedule: NoiseSchedule, reference: np.ndarray,
            target: str) -> np.ndarray:
    """The compared denoiser output at t: E[x_0 | x_t] or eps* (Zhang et al. eq. (4))."""
    x0_hat = optimal_denoiser(x_t, t, schedule, reference)
    if target == "x0":
        return x0_hat
    sqrt_ab = math.sqrt(schedule.alpha_bar[t])
    return (x_t - sqrt_ab * x0_hat) / math.sqrt(-math.expm1(schedule.log_alpha_bar[t]))


def make_grid(T: int, grid: int | Sequence[int]) -> np.ndarray:
    """The compared times: ``grid`` evenly spaced integers from 1 to T (rounded, unique),
    or an explicit strictly increasing list in [1, T]. Returns [G] int64."""
    if isinstance(grid, bool):
        raise BadInputError(f"the grid must be a size or a list of times (got {grid!r})")
    if isinstance(grid, (int, np.integer)):
        if not 1 <= grid <= T:
            raise BadInputError(
                f"the grid size must be between 1 and T = {T} (got {grid}); pass a smaller "
                "--grid"
            )
        # spacing (T - 1)/(G - 1) >= 1, so the rounded times are distinct
        return np.rint(np.linspace(1, T, int(grid))).astype(np.int64)
    g = np.asarray(list(grid))
    if g.ndim != 1 or g.size < 1 or not np.issubdtype(g.dtype, np.integer):
        raise BadInputError("an explicit grid must be a non-empty list of integer times")
    g = g.astype(np.int64)
    if g[0] < 1 or g[-1] > T or np.any(np.diff(g) <= 0):
        raise BadInputError(
            f"grid times must increase strictly inside [1, T] with T = {T} (got "
            f"{g.tolist() if g.size <= 8 else [*g[:8].tolist(), '...']})"
        )
    return g


def similarity_matrix(outputs: np.ndarray, eta: float) -> np.ndarray:
    """S[a, b] = mean over draws and coordinates of 1(|f_a - f_b| <= eta) (eq. (5)).

    outputs: [G, K, D] denoiser outputs per grid time and draw. Returns [G, G] float64.
    """
    G = outputs.shape[0]
    step = max(1, SIM_BLOCK // max(1, outputs[0].size))  # grid times compared at once
    S = np.ones((G, G))
    for a in range(G):
        for b in range(a + 1, G, step):
            agree = np.abs(outputs[b:b + step] - outputs[a][None]) <= eta
            S[a, b:b + step] = agree.mean(axis=(1, 2))
        S[a + 1:, a] = S[a, a + 1:]
    return S


def threshold_starts(to_start: np.ndarray, to_end: np.ndarray, alpha: float,
                     stages: int) -> tuple[int, ...]:
    """Stage starts by the paper's rule (Zhang et al. eqs. (6)-(7), Algorithm 1 l. 8-9).

    to_start, to_end: [G] similarity of each grid time to t = 0 and to t = T. The first
    stage ends at the last grid index j1 whose prefix mean of ``to_start`` is >= alpha;
    with 3 stages the last starts at the first j2 whose suffix mean of ``to_end`` is
    >= alpha. Raises BadInputError when a stage would be empty.
    """
    G = to_start.size
    fix = "change --alpha or use --method dp"
    prefix = np.cumsum(to_start) / np.arange(1, G + 1)
    ok1 = np.flatnonzero(prefix >= alpha)
    if ok1.size == 0:
        raise BadInputError(
            f"no grid time is similar enough to t = 0 for alpha = {alpha} (S(g_0, 0) = "
            f"{to_start[0]:.3f}), so the first stage would be empty; {fix}"
        )
    j1 = int(ok1[-1])
    if stages == 2:
        if j1 == G - 1:
            raise BadInputError(
                f"every grid time is similar to t = 0 on average (alpha = {alpha}), so the "
                f"second stage would be empty; {fix}"
            )
        return (0, j1 + 1)
    suffix = np.cumsum(to_end[::-1])[::-1] / np.arange(G, 0, -1)
    j2 = int(np.flatnonzero(suffix >= alpha)[0]) if np.any(suffix >= alpha) else G
    if j2 <= j1 + 1:
        raise BadInputError(
            f"with alpha = {alpha} the stage near t = 0 (to grid time {j1}) and the stage "
            f"near t = T (from grid time {j2}) leave no middle stage; {fix}"
        )
    if j2 >= G:
        raise BadInputError(
            f"no grid time is similar enough to t = T for alpha = {alpha}, so the last "
            f"stage would be empty; {fix}"
        )
    return (0, j1 + 1, j2)


def ranges_from_starts(grid: np.ndarray, starts: Sequence[int], T: int
                       ) -> tuple[tuple[int, int], ...]:
    """Integer (t_lo, t_hi) per stage: each t goes to its nearest grid time (ties down)."""
    cuts = [int(grid[s - 1] + grid[s]) // 2 for s in starts[1:]]  # last t of each stage
    lo = [1, *(c + 1 for c in cuts)]
    hi = [*cuts, T]
    return tuple(zip(lo, hi, strict=True))


def _check(data: DataSplit, stages: int, samples: int, eta: float, alpha: float,
           method: str, objective: str, target: str, max_reference: int, G: int) -> None:
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or \
            not 1 <= stages <= G:
        raise BadInputError(
            f"the number of stages must be between 1 and the grid size {G} (got {stages}); "
            "each stage needs at least one grid time, so change --stages or --grid"
        )
    if samples < 1 or max_reference < 1:
        raise BadInputError(f"--samples and --max-reference must be at least 1 (got "
                            f"{samples} and {max_reference})")
    if not (math.isfinite(eta) and eta > 0):
        raise BadInputError(f"--eta must be a positive tolerance in output units (got {eta})")
    if not (math.isfinite(alpha) and 0 < alpha <= 1):
        raise BadInputError(f"--alpha must be a fraction in (0, 1] (got {alpha})")
    if method not in METHODS:
        raise BadInputError(f"unknown --method {method!r}; choose dp or threshold")
    if method == "threshold" and stages not in (2, 3):
        raise BadInputError(
            f"the threshold rule of Zhang et al. gives 2 or 3 stages (got --stages "
            f"{stages}); use --method dp for any number of stages"
        )
    if objective not in OBJECTIVES:
        raise BadInputError(f"unknown --objective {objective!r}; choose ratio or mean")
    if target not in TARGETS:
        raise BadInputError(f"unknown --target {target!r}; choose x0 or eps")
    if data.n < 1:
        raise BadInputError(f"the {data.split} split of {data.name} holds no examples")


def cluster_partition(
    data: DataSplit,
    schedule: NoiseSchedule,
    stages: int,
    *,
    samples: int = DEFAULT_SAMPLES,  # (x_0, eps) draws averaged in the similarity
    eta: float = DEFAULT_ETA,  # per-coordinate agreement tolerance, output units
    alpha: float = DEFAULT_ALPHA,  # threshold of method "threshold", in (0, 1]
    grid: int | Sequence[int] = DEFAULT_GRID,  # grid size, or explicit times in [1, T]
    method: str = "dp",  # "dp" (exact segmentation, any K) or "threshold" (paper, K <= 3)
    objective: str = "ratio",  # segmentation objective, see core.segmentation
    target: str = "x0",  # compared output: "x0" (E[x_0 | x_t]) or "eps" (eq. (4))
    max_reference: int = DEFAULT_MAX_REFERENCE,  # subsample larger training sets
    seed: int = 0,  # seed of the draws when no generator is given
    generator: np.random.Generator | None = None,  # source of all randomness, if given
    progress: ProgressFn | None = None,  # called once per grid time
) -> ClusterResult:
    """Cut [1, T] into ``stages`` ranges by optimal-denoiser timestep clustering.

    data: a train split, ``x: [N, *shape]``. Steps: (1) subsample the reference set,
    (2) draw (x_0, eps) pairs, (3) denoiser outputs at t = 0, every grid time and T,
    (4) the similarity matrix, (5) stages by the DP or the threshold rule, (6) integer
    ranges. Randomness is consumed in that order from ``generator`` (or
    ``np.random.default_rng(seed)``): subsample, draw indices, noise. Memory: the
    outputs, G x samples x D float64 (64 x 128 x 3072 x 8 B = 200 MB for 32x32 RGB);
    time: G x samples x n_reference x D multiply-adds.
    """
    g = make_grid(schedule.T, grid)
    _check(data, stages, samples, eta, alpha, method, objective, target, max_reference,
           g.size)
    rng = generator if generator is not None else np.random.default_rng(seed)
    ref = data.x.reshape(data.n, -1)
    if data.n > max_reference:  # 1. subsample
        ref = ref[np.sort(rng.choice(data.n, size=max_reference, replace=False))]
    ref = ref.astype(np.float64)
    x0 = ref[rng.integers(0, ref.shape[0], size=samples)]  # 2. draws (Algorithm 1, l. 4)
    eps = rng.standard_normal(x0.shape)

    def at(t: int) -> np.ndarray:
        x_t = math.sqrt(schedule.alpha_bar[t]) * x0 + \
            math.sqrt(-math.expm1(schedule.log_alpha_bar[t])) * eps
        return _output(x_t, t, schedule, ref, target)

    outputs = np.empty((g.size, samples, ref.shape[1]))  # 3. outputs on the grid
    for a, t in enumerate(g):
        outputs[a] = at(int(t))
        report(progress, "optimal denoiser", a + 1, g.size + 1)
    start = x0 if target == "x0" else eps  # exact t -> 0 limits
    end = outputs[-1] if g[-1] == schedule.T else at(schedule.T)
    report(progress, "optimal denoiser", g.size + 1, g.size + 1)
    to_start = np.array([np.mean(np.abs(o - start) <= eta) for o in outputs])
    to_end = np.array([np.mean(np.abs(o - end) <= eta) for o in outputs])
    S = similarity_matrix(outputs, eta)  # 4.
    if method == "dp":  # 5.
        starts = best_segmentation(S, stages, objective).starts
    else:
        starts = threshold_starts(to_start, to_end, alpha, stages)
    bounds = [*starts, g.size]
    stage_sim = tuple(float(S[a:b, a:b].mean()) for a, b in zip(bounds, bounds[1:],
                                                                 strict=False))
    settings = ClusterSettings(stages=int(stages), method=method, objective=objective,
                               target=target, samples=int(samples), eta=float(eta),
                               alpha=float(alpha), n_reference=int(ref.shape[0]),
                               seed=None if generator is not None else int(seed))
    return ClusterResult(ranges=ranges_from_starts(g, starts, schedule.T), grid=g,  # 6.
                         starts=tuple(starts), similarity=S, to_start=to_start,
                         to_end=to_end, objective=segmentation_score(S, starts, objective),
                         stage_similarity=stage_sim, settings=settings, T=schedule.T)
