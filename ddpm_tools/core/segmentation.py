"""Exact segmentation of an ordered time grid into contiguous stages (dynamic program).

Given a similarity matrix ``S: [G, G]`` over grid times g_0 < ... < g_{G-1}, a
K-stage segmentation cuts the grid into K non-empty runs C_1, ..., C_K of consecutive
points. Each run scores

    w(C) = (1 / |C|^p) * sum_{a, b in C} S[a, b]      (a = b included)

and the segmentation maximises sum_k w(C_k). Two objectives:

* ``"ratio"`` (p = 1): sum_k |C_k| * mean_{a,b in C_k} S[a, b], the *ratio association*
  of Dhillon, Guan & Kulis 2004 ("Kernel k-means, spectral clustering and normalized
  cuts", KDD, Sec. 3): maximising it is minimising the kernel k-means cost
  sum_k (1/|C_k|) sum_{a,b in C_k} (1 - S[a, b]) with dissimilarity 1 - S, because the two
  add up to G when S[a, a] = 1. Stages of every size compete on equal terms.
* ``"mean"`` (p = 2): sum_k mean_{a,b in C_k} S[a, b], the objective of Zhang et al.'s
  released clustering code (``interval_split/analysis/graph_vis.py``, solved there as a
  mixed-integer program). A single point has mean 1, the largest value possible, so this
  objective favours one-point stages at the ends of the grid.

Because stages are contiguous, the best K-stage score of the prefix g_0..g_j obeys

    F[k, j] = max_{k <= i <= j} F[k-1, i-1] + w(g_i..g_j),   F[0, j] = w(g_0..g_j),

an O(K G^2) recursion (the 1-D optimal partition recursion of Bellman 1961, "On the
approximation of curves by line segments using dynamic programming"). Every w is read
from 2-D prefix sums of S in O(1). Ties go to the earliest cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_tools.errors import BadInputError

OBJECTIVES: tuple[str, ...] = ("ratio", "mean")


@dataclass(frozen=True)
class Segmentation:
    """The best K-stage segmentation of a grid."""

    starts: tuple[int, ...]  # grid index of each stage's first point; starts[0] = 0
    score: float  # sum over stages of w(C_k), the maximised objective


def _exponent(objective: str) -> int:
    if objective == "ratio":
        return 1
    if objective == "mean":
        return 2
    raise BadInputError(
        f"unknown segmentation objective {objective!r}; choose one of {', '.join(OBJECTIVES)}"
    )


def _check_matrix(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise BadInputError(f"the similarity matrix must be square [G, G] (got {S.shape})")
    if not np.all(np.isfinite(S)):
        raise BadInputError("the similarity matrix has NaN or infinite entries; recompute it")
    return S


def stage_scores(S: np.ndarray, objective: str = "ratio") -> np.ndarray:
    """w(g_i..g_j) for every run: ``W: [G, G]`` float64, ``W[i, j]`` for i <= j, -inf below.

    S: [G, G] float64 similarity (read as given; it need not be symmetric).
    """
    p = _exponent(objective)
    S = _check_matrix(S)
    G = S.shape[0]
    P = np.zeros((G + 1, G + 1))
    P[1:, 1:] = S.cumsum(axis=0).cumsum(axis=1)
    i = np.arange(G)[:, None]
    j = np.arange(G)[None, :]
    jj = np.maximum(i, j) + 1  # clamp below the diagonal; those entries become -inf
    block = P[jj, jj] - P[i, jj] - P[jj, i] + P[i, i]
    size = (j - i + 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        W = block / size**p
    return np.where(j >= i, W, -np.inf)


def segmentation_score(S: np.ndarray, starts: tuple[int, ...] | list[int],
                       objective: str = "ratio") -> float:
    """The objective of the segmentation whose stages begin at grid indices ``starts``."""
    p = _exponent(objective)
    S = _check_matrix(S)
    G = S.shape[0]
    bounds = [*starts, G]
    if bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise BadInputError(
            f"stage starts {list(starts)} must begin at 0 and increase strictly below G = {G}"
        )
    return float(sum(S[a:b, a:b].sum() / (b - a) ** p
                     for a, b in zip(bounds, bounds[1:], strict=False)))


def best_segmentation(S: np.ndarray, stages: int, objective: str = "ratio") -> Segmentation:
    """The exact best segmentation of the grid of ``S`` into ``stages`` contiguous runs.

    S: [G, G] float64, 1 <= stages <= G. Returns the stage starts and the maximal score.
    """
    W = stage_scores(S, objective)
    G = W.shape[0]
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or \
            not 1 <= stages <= G:
        raise BadInputError(
            f"the number of stages must be an integer between 1 and the grid size {G} "
            f"(got {stages!r}); every stage needs at least one grid time"
        )
    F = np.full((stages, G), -np.inf)  # F[k, j]: best k+1 stages over grid points 0..j
    arg = np.zeros((stages, G), dtype=np.int64)  # start i of the last stage in F[k, j]
    F[0] = W[0]
    for k in range(1, stages):
        cand = F[k - 1, :-1][:, None] + W[1:, :]  # row i-1 <-> last stage starts at i
        best = np.argmax(cand, axis=0)  # first maximum: the earliest cut wins ties
        F[k] = cand[best, np.arange(G)]
        arg[k] = best + 1
    starts = [0] * stages
    j = G - 1
    for k in range(stages - 1, 0, -1):
        starts[k] = int(arg[k, j])
        j = starts[k] - 1
    return Segmentation(starts=tuple(starts), score=float(F[stages - 1, G - 1]))
