"""eval-bpd under torchrun: each rank scores a block of the examples, rank 0 reduces.

The examples, and the noise of every time t, are drawn for the whole example set
exactly as one process draws them, then sliced: rank r takes a contiguous block of whole
batches (:func:`rank_rows`), so every network call sees the same rows as in one process
and the per-example nats are the same numbers. Rank 0 gathers them in the original order
(:func:`gather_examples`) and computes the means and standard errors from all of them.
"""

from __future__ import annotations

import numpy as np

from ddpm_tools.device import Ranks, rank_group


def rank_rows(n: int, batch_size: int, ranks: Ranks | None) -> slice:
    """The examples [a, b) of this rank: whole batches of ``batch_size``, split into
    ``ranks.world`` contiguous blocks as evenly as whole batches allow (all of [0, n)
    without torchrun)."""
    if ranks is None or ranks.world == 1:
        return slice(0, n)
    batches = -(-n // batch_size)
    per, extra = divmod(batches, ranks.world)
    first = ranks.rank * per + min(ranks.rank, extra)
    count = per + (1 if ranks.rank < extra else 0)
    return slice(min(n, first * batch_size), min(n, (first + count) * batch_size))


def gather_examples(ranks: Ranks | None, per: np.ndarray) -> np.ndarray | None:
    """Every rank's per-example array ``[..., n_r]`` joined along the last axis in rank
    order (the examples' original order) on rank 0; None on the other ranks; ``per``
    itself in one process. Travels over the ranks' gloo group as host arrays."""
    if ranks is None or ranks.world == 1:
        return per
    import torch.distributed as dist

    with rank_group(ranks):
        parts: list[object] | None = [None] * ranks.world if ranks.main else None
        dist.gather_object(per, parts, dst=0)
    if parts is None:
        return None
    return np.concatenate([np.asarray(p) for p in parts], axis=-1)
