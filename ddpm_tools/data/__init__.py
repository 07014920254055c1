"""Data sets: the built-in 2-D toy sets and digits, and user data (npz, PNG folder).

A data set is named by a spec string (``--data`` on the CLI):
    8gaussians, checkerboard, moons, swissroll, pinwheel, 2spirals
        FFJORD's 2-D toy sets (see :mod:`ddpm_tools.data.toy2d`), drawn from
        ``(seed, split)``: train 20,000 points, test 5,000, independent streams.
    digits
        scikit-learn's 8x8 digits, 17 levels, fixed split (:mod:`ddpm_tools.data.digits`).
    npz:PATH, folder:PATH
        user data (:mod:`ddpm_tools.data.user`): uint8 images (256 levels) or float vectors.

:func:`load_data` returns a :class:`DataSplit`; :func:`true_log_density` gives the
exact density of 8gaussians and checkerboard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_tools.data.digits import DIGITS_LEVELS, check_split, load_digits_split
from ddpm_tools.data.toy2d import (
    DEFAULT_N,
    TOY_NAMES,
    has_true_density,
    sample_toy,
    split_rng,
    true_log_density,
)
from ddpm_tools.data.user import load_folder, load_npz
from ddpm_tools.errors import BadInputError

__all__ = [
    "DATA_NAMES",
    "DataSplit",
    "has_true_density",
    "load_data",
    "true_log_density",
]

DATA_NAMES: tuple[str, ...] = (*TOY_NAMES, "digits")  # built-in names (user data: npz:, folder:)


@dataclass(frozen=True, eq=False)
class DataSplit:
    """One split of a data set, ready for a model.

    Discrete data (images) holds the level values 2 k / (levels - 1) - 1 in [-1, 1],
    NCHW; continuous data holds raw float coordinates.
    """

    name: str  # the spec as given: "digits", "8gaussians", "npz:PATH", "folder:PATH"
    split: str  # "train" | "test"
    x: np.ndarray  # [N, *shape] float32 examples
    levels: int | None  # 17 for digits, 256 for uint8 images, None for continuous data

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(2,)``, ``(D,)`` or ``(C, H, W)``."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def dims(self) -> int:
        """D, the number of coordinates per example (for bits/dim)."""
        return math.prod(self.shape)

    @property
    def n(self) -> int:
        """Number of examples N."""
        return int(self.x.shape[0])


def _check_int(value: object, name: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise BadInputError(f"{name} must be an integer >= {minimum} (got {value!r}); {fix}")
    return int(value)


def load_data(spec: str, split: str = "train", *, seed: int = 0, n: int | None = None) -> DataSplit:
    """Load ``split`` ("train" | "test") of the data set named by ``spec``.

    Args:
        spec: a built-in name (:data:`DATA_NAMES`), ``npz:PATH`` or ``folder:PATH``.
        split: "train" or "test".
        seed: seed of the 2-D toy sets (train and test draw independent streams of it);
            digits and user data have fixed splits and ignore it.
        n: number of examples. Toy sets draw exactly ``n`` (default 20,000 train,
            5,000 test); fixed sets keep the first ``n`` of the split (default all;
            more than the split holds is an error).
    Returns:
        :class:`DataSplit` with ``x: [N, *shape]`` float32.
    """
    check_split(split)
    seed = _check_int(seed, "seed", 0, "pass a non-negative --seed")
    if n is not None:
        n = _check_int(n, "the number of examples n", 1, "ask for at least 1")
    if spec in TOY_NAMES:
        x = sample_toy(spec, DEFAULT_N[split] if n is None else n, split_rng(seed, split))
        return DataSplit(name=spec, split=split, x=x, levels=None)
    levels: int | None
    if spec == "digits":
        x, _ = load_digits_split(split)
        levels = DIGITS_LEVELS
    elif spec.startswith(("npz:", "folder:")):
        kind, _, path = spec.partition(":")
        if not path:
            raise BadInputError(f"data spec {spec!r} has no path; write {kind}:PATH")
        load = load_npz if kind == "npz" else load_folder
        x, levels = load(Path(path).expanduser(), split)
    else:
        raise BadInputError(
            f"unknown data set {spec!r}; use one of {', '.join(DATA_NAMES)}, "
            "npz:PATH (numpy archive) or folder:PATH (folder of PNGs)"
        )
    if n is not None:
        if n > x.shape[0]:
            raise BadInputError(
                f"the {split} split of {spec} has {x.shape[0]} examples, fewer than the "
                f"{n} asked for; ask for at most {x.shape[0]}"
            )
        x = x[:n].copy()
    return DataSplit(name=spec, split=split, x=x, levels=levels)
