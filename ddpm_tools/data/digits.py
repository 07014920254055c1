"""The ``digits`` set: scikit-learn's bundled 8x8 handwritten digits, 17 levels.

``sklearn.datasets.load_digits()`` ships with scikit-learn (no download): 1,797
images of 8x8 pixels with values 0..16 (UCI "Optical Recognition of Handwritten
Digits", 4x4-block counts). The split is fixed and independent of any seed:

    perm = np.random.default_rng(0).permutation(1797)
    test = perm[:360], train = perm[360:]   (1,437 images)

Images come back as ``[N, 1, 8, 8]`` float32 with x = 2 v / 16 - 1 (exactly the
17 levels -1, -7/8, ..., 1) and labels ``[N]`` int64 in 0..9.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from ddpm_tools.errors import BadInputError

SPLITS: tuple[str, ...] = ("train", "test")
DIGITS_LEVELS = 17  # pixel values 0..16
DIGITS_SHAPE = (1, 8, 8)  # per image, NCHW
DIGITS_N = 1797  # images in the bundled set
DIGITS_TEST_SIZE = 360  # test = the first 360 of the fixed permutation
DIGITS_SPLIT_SEED = 0  # seed of the fixed permutation (never the user's --seed)


def check_split(split: str) -> None:
    """Raise :class:`BadInputError` unless ``split`` is "train" or "test"."""
    if split not in SPLITS:
        raise BadInputError(f"unknown data split {split!r}; use one of {', '.join(SPLITS)}")


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits()`` of the fixed ``split``: ``[1437]`` or ``[360]`` int64."""
    check_split(split)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(DIGITS_N)
    return perm[:DIGITS_TEST_SIZE] if split == "test" else perm[DIGITS_TEST_SIZE:]


@functools.lru_cache(maxsize=1)
def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images ``[N, 8, 8]`` float64 (values 0..16) and labels ``[N]`` int64.

    Read straight from scikit-learn's bundled ``datasets/data/digits.csv.gz`` (64 pixel
    columns, then the label), which is what ``load_digits()`` parses, without importing
    scikit-learn (about a second per process, paid again by every training worker).
    Falls back to ``load_digits()`` if the file is not where this release keeps it.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package, does not import it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    csv = next((Path(r) / "datasets" / "data" / "digits.csv.gz" for r in roots
                if (Path(r) / "datasets" / "data" / "digits.csv.gz").is_file()), None)
    if csv is not None:
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # pragma: no cover - a sklearn release that moved its data files
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = np.asarray(bunch.images, dtype=np.float64), bunch.target
    if images.shape != (DIGITS_N, 8, 8):  # pragma: no cover - a changed sklearn release
        raise RuntimeError(f"scikit-learn's digits have shape {images.shape}, not (1797, 8, 8)")
    images.flags.writeable = False
    labels = np.asarray(labels, dtype=np.int64)
    labels.flags.writeable = False
    return images, labels


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits ``split``: images ``x: [N, 1, 8, 8]`` float32 in [-1, 1], labels ``y: [N]`` int64.

    N = 1,437 (train) or 360 (test); see the module docstring for the fixed split.
    """
    idx = digits_split_indices(split)
    images, labels = _bundled_digits()
    x = (2.0 * images[idx] / (DIGITS_LEVELS - 1) - 1.0).astype(np.float32)[:, None, :, :]
    return x, labels[idx].copy()
