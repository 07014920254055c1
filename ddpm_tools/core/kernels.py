"""numba kernels of the DP's forward pass (the table check: :mod:`.table_scan`; the
back end: :mod:`.backtrack`; two loops as LLVM vector code: :mod:`.simd`).

The dynamic program of Watson et al. 2021 ("Learning to Efficiently Sample from
Diffusion Probabilistic Models", Sec. 3) over a cost table ``L: [T+1, T+1]``:

    C[k, t] = min_{s < t} C[k-1, s] + L[s, t],   C[0, 0] = 0,  C[0, t] = +inf for t > 0,

the least cost of reaching time t from 0 in exactly k steps. Layout and loop order:

* ``C: [K+1, T+1]`` float64 is k-major: for a fixed (k, s) the update over a block of
  targets t is one contiguous vector loop, L read along its row s;
* rows s are pushed in ascending order, so ``C[:, s]`` is final when row s is read; with
  strict ``<`` the smallest s wins every tie; only ``k <= s + 1`` can be finite;
* rows go in blocks of ``DP_BLOCK``, first onto the block's own targets
  (:func:`_push_own`, ``DP_SUB`` rows at a time, each piece onto itself through
  :func:`ddpm_tools.core.simd.triangle`), then onto every later one
  (:func:`_push_block`) in column blocks of ``DP_COLUMNS``, budgets in chunks of
  ``DP_K_CHUNK`` (C[chunk, columns] stays in L2 even with every budget);
* rows go eight at a time (``DP_GROUP``; L[rows, columns] stays in L1 while every budget
  passes over it), through one pass over t per budget: their minimum, a tree of ``min``
  (exact in any order: no NaN gets here), is taken with C[k, t]. Meanwhile the next
  eight rows are prefetched (:func:`ddpm_tools.core.numba_setup.prefetch`): each row's
  piece is a short run on its own page, which the hardware prefetcher would not fetch;
* back-pointers: with few budgets none are kept, and :func:`dp_argmin` reads every s of
  a step again (K steps of at most T rows). With many budgets (every budget: T^2 / 2
  steps) bp[k, t] keeps a hint, the first row of the group whose minimum was smaller
  than C[k, t] (strict ``<``), and :func:`dp_argmin` reads only that group's rows (for
  every state at once: :func:`ddpm_tools.core.backtrack.dp_resolve_hints`). bp is the
  smallest integer type that holds every s (int16 up to T = 32768);
* LLVM and numba's selects: ``bp <- s if better else bp`` became one branch per lane on
  AVX2, so the hint is written ``h + (s - h) * better`` (a vector blend); and
  ``C <- min(m, C)`` became a masked store, so without hints C is taken into the tree
  before its last ``min``. The innermost loops are branch-free: per 4 targets 8 adds
  and 8 mins, and with hints one compare and one blend. With hints, whole runs of 16
  targets go through :func:`ddpm_tools.core.simd.hint_pass` (LLVM vector code: the
  masks of 16 targets narrowed to int16 at once, not 4 at a time: 8-10 % off the
  forward pass for every budget), the rest through the loop here; the same bits;
* ``dp_relax_rows_parallel`` cuts a block's later targets into pieces (a column block
  and a chunk of budgets) that numba's threads (``NUMBA_NUM_THREADS``) take from a
  shared counter, one meeting per block; thread 0 first does the next block's own
  targets. Every (k, t) still takes the rows in ascending order, so both kernels give
  the same bits. Column blocks start at multiples of ``DP_ALIGN`` targets: with C and
  bp from :func:`ddpm_tools.core.dp._forward` (rows on cache lines, padded to a
  multiple of ``DP_ALIGN``), no vector of C or of the hints straddles two lines.

Threads come from numba's ``workqueue`` layer unless ``NUMBA_THREADING_LAYER`` says
otherwise (:mod:`ddpm_tools.core.numba_setup`). Compiled with ``cache=True`` (first call
compiles, later processes load from disk; the parallel kernel too) and without fastmath:
the code adds +inf (a step that cannot be taken) on purpose.
"""

from __future__ import annotations  # noqa: I001  (numba_setup comes before numba)

from ddpm_tools.core import numba_setup  # noqa: F401  (numba's disk cache and threads)
import numba
import numpy as np

from ddpm_tools.core import simd

DP_GROUP = simd.ROWS  # rows per pass over t in _push_columns (the unrolled code below)
DP_SUB = simd.LANES  # rows per piece of a block's own part (onto itself, then on)
DP_COLUMNS = 256  # target columns t per column block
DP_K_CHUNK = 128  # budgets k per pass over a block's rows (that piece of C stays in L2)
DP_BLOCK = 256  # rows per block: the block's own targets first, then every later one
DP_ALIGN = simd.LANES  # C's and bp's rows are padded to a multiple of this (dp._forward)


@numba.njit(cache=True, inline="always")
def _min(a: float, b: float) -> float:
    return a if a < b else b


@numba.njit(cache=True)
def _push_rows(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int, ta: int, tb: int,
    k0: int, k1: int,
) -> None:
    """Push rows s in [s0, s1) onto the targets t in [max(ta, s + 1), tb) for the budgets
    k in [k0, k1), one target at a time (short loops: a block's own rows onto each other,
    ``ta = s0, tb = s1``, and rows left over by the groups of eight). Loop k, s, t: every
    C[k-1, s] is final when row s is read (budget k-1 is done, or ta >= s1) and every
    (k, t) takes the rows in ascending s. Branch-free: which sum wins is data."""
    hints = bp.shape[0] > 0
    for k in range(k0, min(s1 + 1, k1)):
        for s in range(max(s0, k - 1), s1):
            c = C[k - 1, s]
            if hints:
                v = bp.dtype.type(s)
                for t in range(max(ta, s + 1), tb):
                    x = c + L[s, t]
                    cur = C[k, t]
                    h = bp[k, t]
                    bp[k, t] = h + (v - h) * (x < cur)
                    C[k, t] = x if x < cur else cur
            else:
                for t in range(max(ta, s + 1), tb):
                    C[k, t] = _min(c + L[s, t], C[k, t])


@numba.njit(cache=True)
def _push_columns(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int, ta: int, tb: int,
    k0: int, k1: int, cb: int,
) -> None:
    """Push the final rows s in [s0, s1) onto the targets t in [ta, tb), ta >= s1, for the
    budgets k in [k0, k1); the next column block is [tb, min(tb + tb - ta, cb)).

    Rows go eight at a time; for each group, loop k, then t: the group's eight rows of L
    stay in L1 while every budget passes over them. Per (k, t) the eight sums' minimum is
    a tree of ``min`` (the same value in any order: no NaN reaches here), taken with
    C[k, t]. Rows with C[k-1, s] = +inf add nothing. With hints (``bp`` has rows), the
    group's minimum is compared once with C[k, t]; where it is smaller (strict ``<``), C
    takes it and bp takes the group's first row; :func:`dp_argmin` later finds the row
    inside the group (runs of 16 targets: :func:`ddpm_tools.core.simd.hint_pass`, the
    same arithmetic). The innermost loops are branch-free and vectorize; bp is written
    once per eight rows. Between two budgets, a share of the next group's rows of L is
    prefetched (the next eight rows, else the first ones on the next column block), and
    in the first group, C[k + 2, ta:tb] and bp[k + 2, ta:tb]: with every budget, C and
    bp are far larger than the caches and come from memory once per block.
    """
    hints = bp.shape[0] > 0
    w = tb - ta
    k_end = min(s1 + 1, k1)  # row s reaches k <= s + 1 only
    s = s0
    while s + 8 <= s1:
        L0, L1, L2, L3 = L[s, ta:tb], L[s + 1, ta:tb], L[s + 2, ta:tb], L[s + 3, ta:tb]
        L4, L5, L6, L7 = L[s + 4, ta:tb], L[s + 5, ta:tb], L[s + 6, ta:tb], L[s + 7, ta:tb]
        pr, pa, pb = (s + 8, ta, tb) if s + 16 <= s1 else (s0, tb, min(tb + w, cb))
        lines = max(pb - pa + 7, 0) // 8  # cache lines per row of the next group
        ks = min(s + 9, k_end)
        nk = max(ks - k0, 1)
        per = (8 * lines + nk - 1) // nk
        q = 0  # the next group's cache lines, row by row, ``per`` of them per budget
        for k in range(k0, ks):
            qe = min(q + per, 8 * lines)
            while q < qe:
                numba_setup.prefetch(L, pr + q // lines, pa + q % lines * 8)
                q += 1
            if s == s0 and k + 2 < k_end:  # the first group reads C (and bp) from memory
                for t in range(ta, tb, 8):
                    numba_setup.prefetch(C, k + 2, t)
                for t in range(ta, tb if hints else ta, 32):
                    numba_setup.prefetch(bp, k + 2, t)
            c0, c1, c2, c3 = C[k - 1, s], C[k - 1, s + 1], C[k - 1, s + 2], C[k - 1, s + 3]
            c4, c5, c6, c7 = C[k - 1, s + 4], C[k - 1, s + 5], C[k - 1, s + 6], C[k - 1, s + 7]
            Ck = C[k, ta:tb]
            if hints:
                bk = bp[k, ta:tb]
                v = bp.dtype.type(s)
                steps = w // simd.LANES  # 16 targets at a time; then the rest, if any
                simd.hint_pass(L, C, bp, s, k, ta, steps)
                for j in range(steps * simd.LANES, w):
                    a = _min(_min(c0 + L0[j], c1 + L1[j]), _min(c2 + L2[j], c3 + L3[j]))
                    b = _min(_min(c4 + L4[j], c5 + L5[j]), _min(c6 + L6[j], c7 + L7[j]))
                    m = _min(a, b)
                    cur = Ck[j]
                    h = bk[j]
                    bk[j] = h + (v - h) * (m < cur)  # arithmetic, not a select: see the module
                    Ck[j] = m if m < cur else cur
            else:
                for j in range(w):
                    a = _min(_min(c0 + L0[j], c1 + L1[j]), _min(c2 + L2[j], c3 + L3[j]))
                    b = _min(_min(c4 + L4[j], c5 + L5[j]), _min(c6 + L6[j], c7 + L7[j]))
                    # C[k, t] inside the tree, not last: see the module
                    Ck[j] = _min(_min(a, Ck[j]), b)
        s += 8
    _push_rows(L, C, bp, s, s1, ta, tb, k0, k1)  # the rows left over, if any


@numba.njit(cache=True)
def _push_block(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int, ca: int, cb: int
) -> None:
    """Push the final rows s in [s0, s1) onto the targets t in [ca, cb), ca >= s1.

    Column blocks of ``DP_COLUMNS``; in each, budgets in chunks of ``DP_K_CHUNK`` (so
    C[k-chunk, column block] stays in L2 even when every budget is solved): the pieces
    of :func:`_push_piece`, in order.
    """
    for j in range(_pieces(s1, C.shape[0] - 1, ca, cb)):
        _push_piece(L, C, bp, s0, s1, ca, cb, j)


@numba.njit(cache=True)
def _pieces(s1: int, K: int, ca: int, cb: int) -> int:
    """How many pieces (a column block, a chunk of budgets) the rows before s1 have on
    the targets [ca, cb); row s reaches the budgets k <= s + 1 only."""
    chunks = (min(s1, K) + DP_K_CHUNK - 1) // DP_K_CHUNK
    return chunks * ((cb - ca + DP_COLUMNS - 1) // DP_COLUMNS)


@numba.njit(cache=True)
def _push_piece(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int, ca: int, cb: int, j: int
) -> None:
    """Piece j of pushing the final rows [s0, s1) onto the targets [ca, cb): column block
    j // chunks, budget chunk j % chunks (so pieces in order go block by block)."""
    kmax = min(s1, C.shape[0] - 1)
    chunks = (kmax + DP_K_CHUNK - 1) // DP_K_CHUNK
    ta = ca + j // chunks * DP_COLUMNS
    k0 = 1 + j % chunks * DP_K_CHUNK
    _push_columns(L, C, bp, s0, s1, ta, min(ta + DP_COLUMNS, cb), k0,
                  min(k0 + DP_K_CHUNK, kmax + 1), cb)


@numba.njit(cache=True)
def _push_own(L: np.ndarray, C: np.ndarray, bp: np.ndarray, s0: int, s1: int) -> None:
    """Push the rows s in [s0, s1) onto the targets t < s1 of the same block, ascending
    in s, so that every C[:, s] is final when row s is read. Budgets in chunks of
    ``DP_K_CHUNK`` (C[chunk, block] stays in L2); in each, ``DP_SUB`` rows at a time,
    each piece first onto itself (:func:`ddpm_tools.core.simd.triangle`; a shorter last
    piece: :func:`_push_rows`), then onto the rest of the block. Chunk by chunk is
    enough: budget k reads C[k-1, s] only, finished by the chunk before or earlier in
    this one."""
    hints = bp.shape[0] > 0
    kmax = min(s1, C.shape[0] - 1)
    for k0 in range(1, kmax + 1, DP_K_CHUNK):
        k1 = min(k0 + DP_K_CHUNK, kmax + 1)
        for b0 in range(s0, s1, DP_SUB):
            b1 = min(b0 + DP_SUB, s1)
            if b1 - b0 < DP_SUB:
                _push_rows(L, C, bp, b0, b1, b0, b1, k0, k1)
            elif hints:
                simd.triangle_hints(L, C, bp, b0, k0, max(k0, min(b1 + 1, k1)))
            else:
                simd.triangle(L, C, bp, b0, k0, max(k0, min(b1 + 1, k1)))
            for ta in range(b1, s1, DP_COLUMNS):
                _push_columns(L, C, bp, b0, b1, ta, min(ta + DP_COLUMNS, s1), k0, k1, s1)


@numba.njit(cache=True)
def dp_relax_rows(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s_lo: int, s_hi: int, block: int
) -> None:
    """Push source rows s in [s_lo, s_hi) of the DP forward pass onto every t > s, in place.

    L: [T+1, T+1] float64 (only s < t read; no NaN, no -inf). C: [K+1, T+1] float64, with
    C[0, 0] = 0 and +inf elsewhere before the first call. bp: [K+1, T+1] integer
    back-pointer hints, or [0, 0] for none. Rows below ``s_lo`` must have been pushed
    already (calls in ascending order). After the last call C[k, t] is the least cost of
    0 -> t in exactly k steps, and :func:`dp_argmin` finds the smallest s attaining it.
    Rows go in blocks of ``block``: 1. onto the block's own targets, 2. onto every later
    target. One core; see :func:`dp_relax_rows_parallel`.
    """
    n = L.shape[0]
    for s0 in range(s_lo, s_hi, block):
        s1 = min(s0 + block, s_hi)
        _push_own(L, C, bp, s0, s1)
        _push_block(L, C, bp, s0, s1, s1, n)


@numba.njit(cache=True, parallel=True)
def dp_relax_rows_parallel(
    L: np.ndarray, C: np.ndarray, bp: np.ndarray, s_lo: int, s_hi: int, block: int,
    threads: int, own_done: bool,
) -> None:
    """:func:`dp_relax_rows` with step 2 spread over numba's threads and step 1 of the next
    block done beside it.

    ``threads``: pass ``numba.get_num_threads()`` (numba hands the ``threads`` iterations
    out statically, one per thread). ``own_done``: step 1 of the block at ``s_lo`` was
    done by the call before (every call does it for the block after its last one); pass
    ``s_lo > 0`` when the calls run in order.

    For each block [s0, s1), the next block being [s1, e1): thread 0 pushes the block's
    rows onto [s1, e1) first, then does step 1 of the next block (every row before s1
    has reached those targets by then). The targets from e1 on go in pieces of
    ``DP_COLUMNS`` targets and ``DP_K_CHUNK`` budgets, which the threads take one at a
    time from a shared counter (:func:`ddpm_tools.core.numba_setup.take_next`) until
    none is left, thread 0 once its own part is done: a thread that runs slower (a busy
    core, thread 0's own part) takes fewer pieces. Each target column t still takes the
    rows s in ascending order (a block's rows all reach a piece at once, and blocks go
    in turn), so C and bp equal the one-core result bit for bit, however the calls are
    cut and whichever thread takes a piece. Threads meet once per block.
    """
    n = L.shape[0]
    K = C.shape[0] - 1
    taken = np.zeros(1, dtype=np.int64)
    if not own_done:
        _push_own(L, C, bp, s_lo, min(s_lo + block, s_hi))
    for s0 in range(s_lo, s_hi, block):
        s1 = min(s0 + block, s_hi)
        e1 = min(s1 + block, n - 1)
        pieces = _pieces(s1, K, e1, n)
        taken[0] = 0
        for i in numba.prange(threads):
            if i == 0:
                _push_block(L, C, bp, s0, s1, s1, e1)
                _push_own(L, C, bp, s1, e1)
            j = numba_setup.take_next(taken)
            while j < pieces:
                _push_piece(L, C, bp, s0, s1, e1, n, j)
                j = numba_setup.take_next(taken)


@numba.njit(cache=True, parallel=True)
def dp_fill(a: np.ndarray, value: float) -> None:
    """a[...] = value, the rows spread over the threads (each thread also takes the
    first touch of its pages: on Linux the kernel zeroes a new page in the thread that
    touches it first)."""
    for i in numba.prange(a.shape[0]):
        a[i, :] = value


@numba.njit(cache=True)
def dp_argmin(L: np.ndarray, C: np.ndarray, bp: np.ndarray, k: int, t: int) -> int:
    """The smallest s with C[k-1, s] + L[s, t] == C[k, t]: the step into (k, t) of the best
    path, after the forward pass. The sum is the same float64 addition as in the forward
    pass, so the equality is exact. With hints, bp[k, t] is the first row of the group of
    rows that set C[k, t] last, so the search starts there and ends inside that group (at
    most ``DP_GROUP`` rows): every row before the group gave a larger sum. Without (bp
    [0, 0]) it reads every s from k - 1 (no k-1 steps reach a smaller s)."""
    c = C[k, t]
    start = np.int64(bp[k, t]) if bp.shape[0] > 0 else k - 1
    for s in range(start, t):
        if C[k - 1, s] + L[s, t] == c:
            return s
    return -1  # not reached: C and bp came from the forward pass over this L
