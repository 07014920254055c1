"""User data: ``npz:PATH`` (a numpy archive) and ``folder:PATH`` (a folder of PNGs).

npz: arrays under the keys ``train`` and ``test`` are used as the two splits; else
the array under ``x`` (or the only array in the archive) is split 90/10 by the
fixed rule below. Accepted arrays:
    uint8 images  [N, H, W] (grayscale), [N, C, H, W] or [N, H, W, C] with C in 1, 3, 4
                  (the channel axis is the one of axes 1, 3 whose size is 1, 3 or 4;
                  both -> an error asking to transpose) -> 256 levels, x = 2 k / 255 - 1.
    float vectors [N, D] (any float dtype, finite, within float32 range) -> continuous.
folder: every ``*.png`` in the folder (not sub-folders; any case of the suffix),
sorted by name, all of one size and channel count, 8-bit gray, gray+alpha, RGB or
RGBA (channels kept as stored, alpha included) -> 256 levels, split 90/10 by the rule.

The fixed 90/10 rule (independent of --seed): for N examples,
    perm = np.random.default_rng(0).permutation(N)
    test = perm[:ceil(N / 10)], train = perm[ceil(N / 10):]
Every bad input raises :class:`BadInputError` with one sentence naming the file.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from ddpm_tools.errors import BadInputError
from ddpm_tools.io.png import read_png, read_png_header

IMAGE_LEVELS = 256  # 8-bit images
USER_SPLIT_SEED = 0  # seed of the fixed split permutation (never the user's --seed)
USER_TEST_DIVISOR = 10  # test gets ceil(N / 10) examples
CHANNEL_SIZES = (1, 3, 4)  # sizes that mark an axis of a 4-D uint8 array as channels
# level k -> 2 k / 255 - 1, correctly rounded to float32
_LEVEL_TABLE = (2.0 * np.arange(IMAGE_LEVELS) / (IMAGE_LEVELS - 1) - 1.0).astype(np.float32)


def fixed_split_indices(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` ("train" | "test") among ``n`` examples by the fixed 90/10 rule."""
    perm = np.random.default_rng(USER_SPLIT_SEED).permutation(n)
    n_test = -(-n // USER_TEST_DIVISOR)
    return perm[:n_test] if split == "test" else perm[n_test:]


def levels_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 level indices k (any shape) -> float32 2 k / 255 - 1 in [-1, 1], same shape."""
    return _LEVEL_TABLE[images]


def _u8_images(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` -> uint8 ``[N, C, H, W]``."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim != 4:
        raise BadInputError(
            f"{where} is uint8 with shape {arr.shape}; uint8 images must be [N, H, W], "
            "[N, C, H, W] or [N, H, W, C] with C in 1, 3, 4 (store vectors as float32 [N, D])"
        )
    first, last = arr.shape[1] in CHANNEL_SIZES, arr.shape[3] in CHANNEL_SIZES
    if first and last:
        raise BadInputError(
            f"{where} has shape {arr.shape}, where both axis 1 and axis 3 could be the channel "
            "axis; transpose it to [N, C, H, W] or [N, H, W, C] so that only one of those "
            "axes has size 1, 3 or 4"
        )
    if not first and not last:
        raise BadInputError(
            f"{where} has shape {arr.shape} with no channel axis (axis 1 or 3 of size 1, 3 "
            "or 4); store grayscale images as [N, H, W] and color images as [N, H, W, 3]"
        )
    return arr if first else np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _float_vectors(arr: np.ndarray, where: str) -> np.ndarray:
    """Finite float ``[N, D]`` -> float32 ``[N, D]``."""
    if arr.ndim != 2:
        hint = (
            "float images are not supported: store images as uint8 0..255"
            if arr.ndim in (3, 4)
            else "store continuous data as float vectors [N, D]"
        )
        raise BadInputError(f"{where} is a float array of shape {arr.shape}; {hint}")
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise BadInputError(f"{where} has {bad} NaN or inf entries; remove or replace them")
    with np.errstate(over="ignore"):
        x = arr.astype(np.float32)
    if not np.isfinite(x).all():
        raise BadInputError(
            f"{where} has values beyond the float32 range (|x| > 3.4e38); rescale the data"
        )
    return x


def as_data(arr: np.ndarray, where: str) -> tuple[np.ndarray, int | None]:
    """Check and convert one user array: -> (``x: [N, *shape]`` float32, levels or None).

    ``where`` names the array in error messages (e.g. "array 'x' in data.npz").
    """
    if arr.dtype == np.uint8:
        x: np.ndarray = levels_to_float(_u8_images(arr, where))
        levels: int | None = IMAGE_LEVELS
    elif np.issubdtype(arr.dtype, np.floating):
        x, levels = _float_vectors(arr, where), None
    elif np.issubdtype(arr.dtype, np.integer) and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > IMAGE_LEVELS - 1:
            raise BadInputError(
                f"{where} has integer values {lo}..{hi}, out of the 8-bit range 0..255; "
                "store images as uint8 0..255 or continuous data as float32 [N, D]"
            )
        raise BadInputError(
            f"{where} has dtype {arr.dtype}; store images as uint8, e.g. x.astype(np.uint8)"
        )
    else:
        raise BadInputError(
            f"{where} has dtype {arr.dtype}; store images as uint8 (0..255) "
            "or continuous data as float32 vectors [N, D]"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise BadInputError(f"{where} is empty (shape {arr.shape}); store at least one example")
    return x, levels


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.exists():
        raise BadInputError(f"npz file {path} does not exist; check the path after 'npz:'")
    if path.is_dir():
        raise BadInputError(f"{path} is a folder, not an .npz file; use folder:{path} for PNGs")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise BadInputError(
            f"{path} is not a readable .npz archive; save the data with numpy.savez(path, x=...)"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise BadInputError(
            f"{path} is a single .npy array, not an .npz archive; "
            "save it with numpy.savez(path, x=array)"
        )
    return loaded


def _get(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError:
        raise BadInputError(
            f"array {key!r} in {path} holds Python objects (pickled data, not loaded); "
            "store a numeric uint8 or float array"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
        raise BadInputError(f"array {key!r} in {path} is damaged; re-save the archive") from None


def load_npz(path: Path, split: str) -> tuple[np.ndarray, int | None]:
    """The ``split`` of a user .npz: (``x: [N, *shape]`` float32, levels 256 or None)."""
    with _open_npz(path) as npz:
        keys = list(npz.files)
        if "train" in keys or "test" in keys:
            other = "test" if split == "train" else "train"
            missing = [k for k in ("train", "test") if k not in keys]
            if missing:
                raise BadInputError(
                    f"{path} has no array {missing[0]!r} next to the other split; store both "
                    "'train' and 'test', or one array under 'x' to split it 90/10"
                )
            raw, raw_other = _get(npz, split, path), _get(npz, other, path)
            if raw.dtype != raw_other.dtype or raw.shape[1:] != raw_other.shape[1:]:
                raise BadInputError(
                    f"arrays 'train' and 'test' in {path} differ in dtype or example shape "
                    f"({raw.dtype} {raw.shape} vs {raw_other.dtype} {raw_other.shape}); "
                    "store both splits the same way"
                )
            return as_data(raw, f"array {split!r} in {path}")
        if "x" in keys:
            key = "x"
        elif len(keys) == 1:
            key = keys[0]
        else:
            found = ", ".join(repr(k) for k in keys) if keys else "no arrays"
            raise BadInputError(
                f"{path} holds {found}, so the data is ambiguous; store it under 'x' "
                "(split 90/10) or under 'train' and 'test'"
            )
        x, levels = as_data(_get(npz, key, path), f"array {key!r} in {path}")
    if x.shape[0] < 2:
        raise BadInputError(
            f"array {key!r} in {path} has 1 example; the 90/10 split needs at least 2"
        )
    return x[fixed_split_indices(x.shape[0], split)], levels


def load_folder(path: Path, split: str) -> tuple[np.ndarray, int]:
    """The ``split`` of a folder of PNGs: (``x: [N, C, H, W]`` float32 in [-1, 1], 256)."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise BadInputError(f"image folder {path} {what}; check the path after 'folder:'")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if len(files) < 2:
        raise BadInputError(
            f"image folder {path} has {len(files)} .png files; the 90/10 split needs at least 2"
        )
    first = read_png_header(files[0])
    for f in files[1:]:
        header = read_png_header(f)
        if header != first:
            raise BadInputError(
                f"PNG images in {path} differ in size: {files[0].name} is {first.shape} but "
                f"{f.name} is {header.shape} (H, W, C); convert them to one size and mode"
            )
    images = np.stack([read_png(files[i]) for i in fixed_split_indices(len(files), split)])
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return levels_to_float(images), IMAGE_LEVELS
