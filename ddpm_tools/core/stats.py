"""Monte Carlo means and their standard errors (the one place this is computed).

Every estimate the tool prints is a mean over independent examples; its standard
error is the unbiased sample standard deviation over sqrt(n).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def mean_and_se(x: ArrayT, axis: int = 0) -> tuple[ArrayT, ArrayT]:
    """Mean over ``axis`` and its standard error std(ddof=1)/sqrt(n) (0 when n = 1).

    ``x``: ``[n, ...]`` numpy array or torch tensor; returns two arrays of the same kind,
    shape ``x.shape`` without ``axis`` (0-d for a 1-d input). numpy and torch inputs
    are reduced by their own library, so each caller's numbers stay what they were.
    """
    n = x.shape[axis]
    if isinstance(x, torch.Tensor):
        m = x.mean(axis)
        se = x.std(axis, unbiased=True) / math.sqrt(n) if n > 1 else torch.zeros_like(m)
        return m, se
    m_np = x.mean(axis)
    se_np = x.std(axis, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(m_np)
    return m_np, se_np
