"""Data layer: toy-set samplers and exact densities, the fixed digits split, user npz and
PNG folders, and every bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_tools.data import DATA_NAMES, DataSplit, has_true_density, load_data, true_log_density
from ddpm_tools.data.digits import load_digits_split
from ddpm_tools.data.toy2d import GAUSS8_STD, TOY_NAMES, gauss8_centers
from ddpm_tools.data.user import fixed_split_indices
from ddpm_tools.errors import BadInputError
from ddpm_tools.io.png import write_png

# ---------------------------------------------------------------- 2-D toy sets


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_sets_are_seeded_and_split(name: str) -> None:
    train, test = load_data(name, "train", seed=3), load_data(name, "test", seed=3)
    assert isinstance(train, DataSplit) and train.levels is None
    assert train.x.shape == (20_000, 2) and test.x.shape == (5_000, 2)
    assert train.x.dtype == np.float32 and np.isfinite(train.x).all()
    assert (train.shape, train.dims, train.n) == ((2,), 2, 20_000)
    assert (train.name, train.split, test.split) == (name, "train", "test")
    np.testing.assert_array_equal(load_data(name, "train", seed=3).x, train.x)
    assert not np.array_equal(load_data(name, "train", seed=4).x, train.x)
    # train and test are independent streams: no point in common
    assert not {r.tobytes() for r in train.x} & {r.tobytes() for r in test.x}
    assert load_data(name, "test", seed=3, n=7).x.shape == (7, 2)


@pytest.mark.parametrize(
    "name,mean",
    [
        ("moons", (0.0, 0.3)),  # half circles: mean (0.5, 0.25), then * 2 + (-1, -0.2)
        # E[t cos t] = 2, E[t sin t] = 2 / (3 pi) for t ~ U[1.5 pi, 4.5 pi]; then / 5
        ("swissroll", (0.4, 2 / (3 * math.pi) / 5)),
        ("pinwheel", (0.0, 0.0)),
        ("2spirals", (0.0, 0.0)),
        ("checkerboard", (0.0, 0.0)),
        ("8gaussians", (0.0, 0.0)),
    ],
)
def test_toy_set_means(name: str, mean: tuple[float, float]) -> None:
    x = load_data(name, seed=0).x.astype(np.float64)
    se = x.std(axis=0) / math.sqrt(len(x))
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * se + 1e-3), x.mean(axis=0)


def test_toy_set_radii() -> None:
    # pinwheel: radius 2 |f| with f ~ (N(1, 0.3), N(0, 0.1)), E|f| ~ 1.005
    r = np.linalg.norm(load_data("pinwheel").x, axis=1)
    assert abs(r.mean() - 2.01) < 0.02
    # 2spirals: radius ~ pi sqrt(U) before jitter and noise, median pi / sqrt(2)
    r = np.linalg.norm(load_data("2spirals").x, axis=1)
    assert abs(np.median(r) - math.pi / math.sqrt(2)) < 0.1 and r.max() < 4.0


def test_eight_gaussians_components() -> None:
    x = load_data("8gaussians", seed=1).x.astype(np.float64)
    centers = gauss8_centers()
    assert np.allclose(np.linalg.norm(centers, axis=1), 4 / 1.414)
    k = np.argmin(((x[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(k, minlength=8) / len(x)
    assert np.all(np.abs(freq - 1 / 8) < 0.012)
    assert abs((x - centers[k]).std() - 0.5 / 1.414) < 0.01


def _grid(lo: float, hi: float, h: float) -> np.ndarray:
    c = np.arange(lo + h / 2, hi, h)  # cell midpoints
    return np.stack(np.meshgrid(c, c), axis=-1).reshape(-1, 2)


def test_eight_gaussians_density_integrates_and_matches_samples() -> None:
    h = 0.02
    grid = _grid(-6, 6, h)
    logp = true_log_density("8gaussians", grid)
    p = np.exp(logp)
    assert abs(p.sum() * h * h - 1) < 1e-6
    neg_entropy = (p * logp).sum() * h * h  # int p log p
    lp = true_log_density("8gaussians", load_data("8gaussians", seed=2).x)
    assert abs(lp.mean() - neg_entropy) < 4 * lp.std() / math.sqrt(len(lp))
    # at a center the other components are negligible: log (1/8) - log(2 pi sigma^2)
    at_center = true_log_density("8gaussians", gauss8_centers()[:1])[0]
    assert at_center == pytest.approx(-math.log(8) - math.log(2 * math.pi * GAUSS8_STD**2))


def test_checkerboard_density_integrates_and_matches_samples() -> None:
    h = 0.05
    logp = true_log_density("checkerboard", _grid(-5, 5, h))
    assert abs(np.exp(logp).sum() * h * h - 1) < 1e-9
    assert set(np.unique(logp)) == {-np.inf, -math.log(32)}
    x = load_data("checkerboard", seed=5).x
    assert np.all(true_log_density("checkerboard", x) == -math.log(32))
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=4, range=[[-4, 4], [-4, 4]])[0] / len(x)
    on = np.exp(true_log_density("checkerboard", _grid(-4, 4, 2.0))).reshape(4, 4).T > 0
    assert on.sum() == 8 and (counts[~on] == 0).all()
    assert np.all(np.abs(counts[on] - 1 / 8) < 0.012)
    on_points = np.array([[1.0, 1.0], [-3.0, 1.0], [-4.0, -4.0], [3.99, -0.5]])
    assert np.all(true_log_density("checkerboard", on_points) == -math.log(32))
    off = np.array([[1.0, 3.0], [-1.0, 1.0], [4.5, 0.5], [0.0, -4.01], [4.0, -4.0]])
    assert np.isneginf(true_log_density("checkerboard", off)).all()


def test_true_density_api_errors() -> None:
    assert has_true_density("8gaussians") and has_true_density("checkerboard")
    assert not has_true_density("moons") and not has_true_density("digits")
    with pytest.raises(BadInputError, match="8gaussians"):
        true_log_density("moons", np.zeros((3, 2)))
    with pytest.raises(BadInputError, match=r"\[N, 2\]"):
        true_log_density("8gaussians", np.zeros((3, 3)))


# ---------------------------------------------------------------- digits


def test_digits_fixed_split() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    for split, idx in (("test", perm[:360]), ("train", perm[360:])):
        x, y = load_digits_split(split)
        assert x.shape == (len(idx), 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 0], bunch.images[idx] / 8 - 1)
        np.testing.assert_array_equal(y, bunch.target[idx])
    data = load_data("digits", "train", seed=123)
    assert (data.levels, data.n, data.shape, data.dims) == (17, 1437, (1, 8, 8), 64)
    np.testing.assert_array_equal(data.x, load_data("digits", "train", seed=0).x)
    k = (data.x + 1) * 8
    assert np.array_equal(k, np.round(k)) and k.min() == 0 and k.max() == 16
    assert load_data("digits", "test", n=10).x.shape == (10, 1, 8, 8)
    with pytest.raises(BadInputError, match="360"):
        load_data("digits", "test", n=361)
    with pytest.raises(BadInputError, match="valid|train"):
        load_digits_split("val")


def test_digits_load_without_importing_sklearn() -> None:
    """The bundled file is parsed directly: every training worker would otherwise pay
    scikit-learn's import (about a second)."""
    code = ("import sys; from ddpm_tools.data import load_data; "
            "d = load_data('digits', 'train'); "
            "print(d.n, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["1437", "False"]


# ---------------------------------------------------------------- user npz


def test_fixed_split_rule() -> None:
    test, train = fixed_split_indices(23, "test"), fixed_split_indices(23, "train")
    assert len(test) == 3 and len(train) == 20
    assert sorted(np.concatenate([test, train]).tolist()) == list(range(23))
    np.testing.assert_array_equal(test, np.random.default_rng(0).permutation(23)[:3])


def test_npz_x_is_split_90_10(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.savez(tmp_path / "d.npz", x=x, other=np.zeros(2))
    spec = f"npz:{tmp_path / 'd.npz'}"
    train, test = load_data(spec, "train", seed=1), load_data(spec, "test", seed=2)
    assert (train.n, test.n, train.levels, train.shape, train.name) == (45, 5, None, (3,), spec)
    assert train.x.dtype == np.float32
    np.testing.assert_array_equal(test.x, x[fixed_split_indices(50, "test")].astype(np.float32))
    both = np.concatenate([train.x, test.x])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.astype(np.float32).tolist()))


def test_npz_only_array_and_train_test_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", np.arange(20, dtype=np.float64).reshape(10, 2))
    assert load_data(f"npz:{tmp_path / 'one.npz'}", "test").n == 1
    tr = np.zeros((4, 5, 6), np.uint8)
    te = np.full((2, 5, 6), 255, np.uint8)
    np.savez(tmp_path / "tt.npz", train=tr, test=te)
    train = load_data(f"npz:{tmp_path / 'tt.npz'}", "train")
    test = load_data(f"npz:{tmp_path / 'tt.npz'}", "test")
    assert train.x.shape == (4, 1, 5, 6) and test.x.shape == (2, 1, 5, 6)
    assert (train.x == -1).all() and (test.x == 1).all() and test.levels == 256


def test_npz_image_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nchw = rng.integers(0, 256, (10, 3, 5, 6)).astype(np.uint8)
    want = 2 * nchw.astype(np.float64) / 255 - 1
    for name, arr in (("nchw", nchw), ("nhwc", nchw.transpose(0, 2, 3, 1))):
        np.savez(tmp_path / f"{name}.npz", x=arr)
        data = load_data(f"npz:{tmp_path / name}.npz", "train")
        assert data.shape == (3, 5, 6) and data.levels == 256 and data.x.dtype == np.float32
        np.testing.assert_allclose(data.x, want[fixed_split_indices(10, "train")], atol=1e-7)
    assert set(np.unique(data.x * 255 / 2 + 255 / 2).round(3)) <= set(range(256))


BAD_NPZ = {
    "float images": (np.zeros((10, 1, 8, 8), np.float32), "uint8"),
    "int64 images": (np.zeros((10, 8, 8), np.int64), "int64"),
    "int out of range": (np.full((10, 8, 8), 300, np.int32), "0..255"),
    "bool": (np.zeros((10, 2), bool), "dtype bool"),
    "1-D floats": (np.zeros(10), "vectors"),
    "2-D uint8": (np.zeros((10, 64), np.uint8), "uint8 images must be"),
    "5-D uint8": (np.zeros((2, 1, 1, 8, 8), np.uint8), "uint8 images must be"),
    "ambiguous": (np.zeros((10, 3, 8, 4), np.uint8), "transpose"),
    "no channels": (np.zeros((10, 8, 8, 8), np.uint8), "channel"),
    "NaN": (np.array([[0.0, np.nan]] * 10), "NaN"),
    "inf": (np.array([[0.0, np.inf]] * 10), "inf"),
    "beyond float32": (np.full((10, 2), 1e300), "float32 range"),
    "empty": (np.zeros((0, 2), np.float32), "empty"),
    "zero width": (np.zeros((10, 0), np.float32), "empty"),
    "one example": (np.zeros((1, 2), np.float32), "at least 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_npz_bad_arrays(tmp_path: Path, case: str) -> None:
    arr, message = BAD_NPZ[case]
    path = tmp_path / "bad.npz"
    np.savez(path, x=arr)
    with pytest.raises(BadInputError, match=message) as err:
        load_data(f"npz:{path}", "train")
    assert str(path) in str(err.value)


def test_npz_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    np.save(tmp_path / "plain.npy", np.zeros((4, 2)))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    np.savez(tmp_path / "none.npz")
    np.savez(tmp_path / "half.npz", train=np.zeros((4, 2)))
    np.savez(tmp_path / "mismatch.npz", train=np.zeros((4, 2)), test=np.zeros((4, 3)))
    cases = {
        "missing.npz": "does not exist",
        "junk.npz": "not a readable .npz",
        "plain.npy": ".npy",
        "obj.npz": "Python objects",
        "two.npz": "'a', 'b'",
        "none.npz": "no arrays",
        "half.npz": "'test'",
        "mismatch.npz": "differ",
        "": "folder",
    }
    for name, message in cases.items():
        with pytest.raises(BadInputError, match=message) as err:
            load_data(f"npz:{tmp_path / name}", "test")
        assert str(tmp_path / name) in str(err.value)


# ---------------------------------------------------------------- PNG folders


def test_folder_of_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 4, 5, 3)).astype(np.uint8)
    for i, img in enumerate(images):
        write_png(tmp_path / f"img{i:02d}.png", img)
    (tmp_path / "notes.txt").write_text("ignored")
    train = load_data(f"folder:{tmp_path}", "train")
    test = load_data(f"folder:{tmp_path}", "test")
    assert (train.n, test.n, train.shape, train.levels) == (10, 2, (3, 4, 5), 256)
    idx = fixed_split_indices(12, "test")
    want = 2 * images[idx].transpose(0, 3, 1, 2).astype(np.float64) / 255 - 1
    np.testing.assert_allclose(test.x, want, atol=1e-7)


def test_folder_gray_and_bad_folders(tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    for i in range(3):
        write_png(gray / f"{i}.png", np.full((2, 3), 255 * (i % 2), np.uint8))
    assert load_data(f"folder:{gray}", "train").shape == (1, 2, 3)
    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", np.zeros((2, 3), np.uint8))
    write_png(mixed / "b.png", np.zeros((3, 2), np.uint8))
    rgb = tmp_path / "rgb"
    write_png(rgb / "a.png", np.zeros((2, 3), np.uint8))
    write_png(rgb / "b.png", np.zeros((2, 3, 3), np.uint8))
    broken = tmp_path / "broken"
    write_png(broken / "a.png", np.zeros((2, 3), np.uint8))
    (broken / "b.png").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    cases = {
        mixed: "b.png",
        rgb: "differ",
        broken: "b.png",
        tmp_path / "empty": "0 .png files",
        tmp_path / "nope": "does not exist",
        gray / "0.png": "not a folder",
    }
    for path, message in cases.items():
        with pytest.raises(BadInputError, match=message) as err:
            load_data(f"folder:{path}", "train")
        assert str(path) in str(err.value)


# ---------------------------------------------------------------- specs and arguments


def test_bad_specs_and_arguments() -> None:
    assert DATA_NAMES == (*TOY_NAMES, "digits")
    with pytest.raises(BadInputError) as err:
        load_data("mnist")
    assert all(name in str(err.value) for name in DATA_NAMES) and "npz:PATH" in str(err.value)
    with pytest.raises(BadInputError, match="no path"):
        load_data("npz:")
    with pytest.raises(BadInputError, match="split"):
        load_data("moons", "validation")
    with pytest.raises(BadInputError, match="seed"):
        load_data("moons", seed=-1)
    with pytest.raises(BadInputError, match="number of examples"):
        load_data("moons", n=0)
