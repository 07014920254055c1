"""Exponential sums over dimensions, S[n, m] = sum_d w[n, d] exp(-u[n, d] delta[m]).

A cost-table column with ``learned_range`` variances needs, per example and for every
s < t, sums over the D dimensions of w_d exp(-u_d delta_s), with u = v from the network
at t and delta_s = log(beta_{t|s} / beta_tilde_{t|s}) (Nichol & Dhariwal 2021, Eq. 15,
in the respaced form of docs/DESIGN.md). Directly that is n * D * m exponentials. Here each
example's sum is replaced, exactly to rounding, by a sum over q * p "virtual" exponents:

1. split the example's range [u_min, u_max] into q equal pieces of half-width h and
   centres c_i; write u = c_i + h x with x in [-1, 1] inside piece i;
2. interpolate g(x) = exp(-h delta x) at the p Chebyshev points x_k = cos((k + 1/2) pi / p):
   g(x) ~ sum_k g(x_k) l_k(x), with the Lagrange polynomials
   l_k(x) = (1/p) (1 + 2 sum_{j=1..p-1} T_j(x_k) T_j(x))  (Trefethen, ATAP, Ch. 3-4);
3. the per-example moments M[i, j] = sum_{d in piece i} w_d T_j(x_d) give the weights
   lam[i, k] = sum_d w_d l_k(x_d), so that

       S(delta) ~ sum_i sum_k lam[i, k] exp(-(c_i + h x_k) delta),

   O(D p) work per example for the moments and O(m q p) multiply-adds with (1 + q + p)
   exponentials per point for the sums (exp(-(u_min + (2i+1) h + h x_k) delta) factors
   into three), instead of D m exponentials.

Why it is exact to 1e-10 relative. On a piece, exp(-u delta) = exp(-c_i delta) g(x) with
z = h delta; the interpolation error of the degree p-1 Chebyshev interpolant is
|g(x) - P(x)| <= z^p e^z / (2^{p-1} p!) (the remainder formula with prod (x - x_k) =
T_p(x) / 2^{p-1}). Since w >= 0, the piece's true sum is at least
exp(-c_i delta) W_i e^{-z} (W_i its total weight), so the relative truncation error is at
most z^p e^{2z} / (2^{p-1} p!); p is the smallest number of points that makes this
<= ``TRUNCATION_TOL`` = 1e-13 at the largest z = h * max(delta), and the pieces keep that z
<= ``PIECE_Z`` = 1.5 (p = 16). Rounding: the Chebyshev recurrence, the moments and the
Lagrange weights carry relative errors of order p^2 eps each, and the final sum at most
Lebesgue(p) e^{2z} times that (Lebesgue(p) <= 1 + (2/pi) log p for these points): about
1e-12 in all. A sum of pieces with non-negative true values keeps the worst relative error
of its pieces. So the fast path matches the direct sum to 1e-10 relative per entry with
a wide margin, for every w >= 0 and any finite u.

When u's range times max(delta) needs more than ``MAX_PIECES`` pieces, or the q * p
virtual exponents would cost about as much as the D real ones, ``exp_sums`` computes the
direct sum instead (``plan`` says which). Torch tensors in and out: float64, one device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ddpm_tools.errors import BadInputError

TRUNCATION_TOL = 1e-13  # largest relative truncation error allowed on the fast path
PIECE_Z = 1.5  # largest h * max(delta) per piece (h: half-width of a piece of u)
MAX_PIECES = 64  # beyond this many pieces per example the direct sum is used
CHUNK_ELEMENTS = 1 << 22  # float64 elements per temporary (bounds memory, ~32 MiB)

Method = Literal["auto", "fast", "direct"]


@dataclass(frozen=True)
class ExpSumPlan:
    """How :func:`exp_sums` evaluates one call."""

    fast: bool  # True: moments and virtual exponents; False: the direct sum
    pieces: int  # q, pieces of each example's u range (fast path)
    points: int  # p, Chebyshev points per piece (fast path)
    z: float  # largest h * delta on a piece (the truncation bound's argument)


def points_for(z: float, tol: float = TRUNCATION_TOL) -> int:
    """Smallest p with z^p e^{2z} / (2^{p-1} p!) <= tol (the relative error bound)."""
    if z <= 0.0:
        return 1
    p = 1
    while p * math.log(z) + 2 * z - (p - 1) * math.log(2) - math.lgamma(p + 1) > math.log(tol):
        p += 1
    return p


def plan(u: torch.Tensor, delta: torch.Tensor, method: Method = "auto") -> ExpSumPlan:
    """The evaluation of ``exp_sums(w, u, delta, method=method)``.

    u: [n, D]; delta: [m]. Fast when asked for, or (``auto``) when at most ``MAX_PIECES``
    pieces are needed and the work p * (D + q * m) is below the direct D * m.
    """
    n, D = u.shape
    m = delta.shape[0]
    if n == 0 or m == 0 or method == "direct":
        return ExpSumPlan(False, 1, 1, 0.0)
    half = float((u.amax(1) - u.amin(1)).max()) / 2 * float(delta.max())
    q = max(1, math.ceil(half / PIECE_Z))
    z = half / q
    p = points_for(z)
    fast = method == "fast" or (q <= MAX_PIECES and p * (D + q * m) < D * m)
    return ExpSumPlan(fast, q, p, z)


def _check(ws: list[torch.Tensor], u: torch.Tensor, delta: torch.Tensor) -> None:
    """Shapes, dtype float64, one device, finite u, finite delta >= 0."""
    if u.ndim != 2 or delta.ndim != 1 or any(w.shape != u.shape for w in ws):
        raise BadInputError(
            f"exponential sums need w and u of one shape [n, D] and delta [m]; got "
            f"{[tuple(w.shape) for w in ws]}, {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    if any(x.dtype != torch.float64 or x.device != u.device for x in (*ws, delta, u)):
        raise BadInputError("exponential sums need float64 tensors on one device; cast them")
    if not bool(torch.isfinite(u).all()) or not bool(
        (torch.isfinite(delta) & (delta >= 0)).all()
    ):
        raise BadInputError("exponential sums need finite u and finite delta >= 0")


def _direct(ws: list[torch.Tensor], u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """[r, n, m]: sum_d w_d exp(-u_d delta_m) term by term (the reference)."""
    W = torch.stack(ws)  # [r, n, D]
    r, n, D = W.shape
    m = delta.shape[0]
    out = torch.empty((r, n, m), dtype=torch.float64, device=u.device)
    n_c = max(1, min(n, CHUNK_ELEMENTS // max(1, D)))
    m_c = max(1, CHUNK_ELEMENTS // max(1, n_c * D))
    for a in range(0, n, n_c):
        for b in range(0, m, m_c):
            e = torch.exp(u[a : a + n_c, :, None] * (-delta[b : b + m_c])[None, None, :])
            out[:, a : a + n_c, b : b + m_c] = torch.einsum("rnd,ndm->rnm", W[:, a : a + n_c], e)
    return out


def _moments(W: torch.Tensor, u: torch.Tensor, q: int, p: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-3 above: (lam [r, n, q, p], u_min [n], h [n], x_k [p]).

    The virtual exponent of (piece i, point k) is u_min + (2 i + 1) h + h x_k.
    """
    r, n, D = W.shape
    dev = u.device
    u_min, u_max = u.amin(1), u.amax(1)  # [n]
    h = (u_max - u_min) / (2 * q)  # half-width of a piece
    h_safe = torch.where(h > 0, h, torch.ones_like(h))[:, None]  # u constant: x = 0
    piece = torch.floor((u - u_min[:, None]) / (2 * h_safe)).clamp_(0, q - 1)  # [n, D]
    x = (u - (u_min[:, None] + (2 * piece + 1) * h[:, None])) / h_safe  # [-1, 1] + rounding
    moments = torch.zeros((r, n, q, p), dtype=torch.float64, device=dev)
    idx = piece.long()[None].expand(r, n, D)
    x2 = 2 * x
    t_prev, t_cur = torch.ones_like(x), x  # T_0, T_1; T_{j+1} = 2 x T_j - T_{j-1}
    for j in range(p):
        moments[..., j].scatter_add_(2, idx, W * (t_prev if j == 0 else t_cur)[None])
        if j >= 1:
            t_next = x2 * t_cur
            t_next -= t_prev
            t_prev, t_cur = t_cur, t_next
    k = torch.arange(p, dtype=torch.float64, device=dev)
    nodes = torch.cos((k + 0.5) * math.pi / p)  # [p] Chebyshev points of the first kind
    basis = torch.cos(k[:, None] * torch.acos(nodes)[None, :]) * 2 / p  # [j, k] 2 T_j(x_k)/p
    basis[0] = 1.0 / p
    return moments @ basis, u_min, h, nodes


def _fast(
    ws: list[torch.Tensor], u: torch.Tensor, delta: torch.Tensor, q: int, p: int
) -> torch.Tensor:
    """[r, n, m] through q * p virtual exponents per example.

    exp(-(u_min + (2 i + 1) h + h x_k) delta) is the product of three exponentials of
    [n, m], [n, q, m] and [n, p, m]: (1 + q + p) exponentials per (example, point), not q p.
    """
    W = torch.stack(ws)
    r, n, D = W.shape
    m = delta.shape[0]
    out = torch.empty((r, n, m), dtype=torch.float64, device=u.device)
    n_c = max(1, min(n, CHUNK_ELEMENTS // max(1, D * (r + 2), (r + 1) * (q + p) * 256)))
    centre = 2 * torch.arange(q, dtype=torch.float64, device=u.device) + 1  # [q]
    for a in range(0, n, n_c):
        lam, u_min, h, nodes = _moments(W[:, a : a + n_c], u[a : a + n_c], q, p)
        nn = u_min.shape[0]
        m_c = max(1, CHUNK_ELEMENTS // (nn * (r + 1) * (q + p)))
        for b in range(0, m, m_c):
            d = -delta[b : b + m_c]
            e_min = torch.exp(u_min[:, None] * d)  # [n, m]
            e_piece = torch.exp((h[:, None] * centre)[:, :, None] * d)  # [n, q, m]
            e_node = torch.exp((h[:, None] * nodes)[:, :, None] * d)  # [n, p, m]
            inner = torch.einsum("rnik,nkm->rnim", lam, e_node)  # [r, n, q, m]
            out[:, a : a + n_c, b : b + m_c] = torch.einsum(
                "rnim,nim->rnm", inner, e_piece) * e_min[None]
    return out


def _sums(
    ws: list[torch.Tensor], u: torch.Tensor, delta: torch.Tensor, method: Method
) -> torch.Tensor:
    _check(ws, u, delta)
    how = plan(u, delta, method)
    return _fast(ws, u, delta, how.pieces, how.points) if how.fast else _direct(ws, u, delta)


def exp_sums(
    w: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, *, method: Method = "auto"
) -> torch.Tensor:
    """S[n, m] = sum_d w[n, d] exp(-u[n, d] delta[m]), float64 on u's device.

    w: [n, D] >= 0; u: [n, D] finite; delta: [m] finite >= 0; all float64, one device.
    ``method``: ``auto`` (see :func:`plan`), ``fast`` or ``direct`` (the reference).
    """
    return _sums([w], u, delta, method)[0]


def learned_range_sums(
    u: torch.Tensor, err2: torch.Tensor, delta: torch.Tensor, *, method: Method = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sums of a ``learned_range`` cost column: ([n, m], [n, m]).

    sum_d exp(-u_d delta_s) and sum_d err2_d exp(-u_d delta_s), for u = v: [n, D] (the
    network's interpolation weight at t), err2 = (x0 - x0_hat)^2: [n, D] and
    delta_s = log(beta_{t|s} / beta_tilde_{t|s}): [m]. One set of moments serves both.
    """
    both = _sums([torch.ones_like(u), err2], u, delta, method)
    return both[0], both[1]
