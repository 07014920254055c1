"""ddpm-tools eval-samples: the API, the CLI end to end, caching, the Inception glue, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.data import load_data
from ddpm_tools.data.digits import load_digits_split
from ddpm_tools.errors import CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.metrics.classifier import ASSET_PATH
from ddpm_tools.metrics.evaluate_samples import evaluate_samples, refstats_dir

runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPM_TOOLS_CACHE", str(tmp_path / "cache"))


def _levels(x: np.ndarray, levels: int = 17) -> np.ndarray:
    return np.round((x + 1) / 2 * (levels - 1)).astype(np.uint8)


def _save(path: Path, samples: np.ndarray, levels: int = 17, data: str = "digits") -> Path:
    np.savez(path, samples=samples, levels=np.int64(levels), data=np.array(data))
    return path


def _run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["eval-samples", *map(str, args)])
    return result.exit_code, result.output


def _metrics(output: str) -> dict[str, dict[str, float]]:
    return {m["name"]: m for m in json.loads(output)["metrics"]}


# ---------------------------------------------------------------- images


def test_cli_digits_real_beats_noise(tmp_path: Path) -> None:
    x_train, _ = load_digits_split("train")
    real = _save(tmp_path / "real.npz", _levels(x_train[:360]))
    noise = _save(tmp_path / "noise.npz",
                  np.random.default_rng(0).integers(0, 17, (360, 1, 8, 8)).astype(np.uint8))
    code, out_real = _run("--samples", real, "--data", "digits", "--split", "test", "--json")
    assert code == 0, out_real
    code, out_noise = _run("--samples", noise, "--data", "digits", "--json")
    assert code == 0, out_noise
    r, n = _metrics(out_real), _metrics(out_noise)
    assert r["frechet_distance"]["value"] < 1.0
    assert n["frechet_distance"]["value"] > 10 * r["frechet_distance"]["value"]
    assert abs(r["kid"]["value"]) < 3 * r["kid"]["se"]
    assert n["kid"]["value"] > 5 * n["kid"]["se"]
    assert r["precision"]["value"] > 0.8 and r["recall"]["value"] > 0.8
    assert n["precision"]["value"] < r["precision"]["value"]
    assert n["recall"]["value"] < 0.5 * r["recall"]["value"]
    info = json.loads(out_real)
    assert info["classifier_sha256"] == sha256_file(ASSET_PATH)
    assert info["classifier_accuracy"] >= 0.97
    assert info["n_reference"] == 360 and info["n_samples"] == 360


def test_cli_table_prints_accuracy_and_sha(tmp_path: Path) -> None:
    x_test, _ = load_digits_split("test")
    path = _save(tmp_path / "s.npz", _levels(x_test[:50]))
    code, out = _run("--samples", path)  # --data taken from the file
    assert code == 0, out
    for word in ("frechet_distance", "kid", "precision", "recall", "±", "test accuracy"):
        assert word in out
    assert sha256_file(ASSET_PATH) in out.replace("\n", "")


def test_reference_features_are_cached_once(tmp_path: Path) -> None:
    x_test, _ = load_digits_split("test")
    path = _save(tmp_path / "s.npz", _levels(x_test[:40]))
    first = evaluate_samples(path, "digits", "test", 0)
    assert first.reference_cache is not None
    cache = Path(first.reference_cache)
    assert cache.parent == refstats_dir() and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    second = evaluate_samples(path, "digits", "test", 0)
    assert second.reference_cache == first.reference_cache
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    assert second.metrics == first.metrics
    cache.write_bytes(b"damaged")  # a damaged cache is recomputed, never trusted
    third = evaluate_samples(path, "digits", "test", 0)
    assert third.metrics == first.metrics and cache.stat().st_size > 100
    train = evaluate_samples(path, "digits", "train", 0)
    assert train.reference_cache != first.reference_cache and train.n_reference == 1437


def test_unwritable_cache_still_scores(tmp_path: Path) -> None:
    x_test, _ = load_digits_split("test")
    path = _save(tmp_path / "s.npz", _levels(x_test[:40]))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    report = evaluate_samples(path, "digits", "test", 0, cache_dir=blocker / "refstats")
    assert report.reference_cache is None
    cached = evaluate_samples(path, "digits", "test", 0, cache_dir=tmp_path / "refstats")
    assert cached.reference_cache is not None  # the same numbers with a cache
    assert report.metric("frechet_distance").value == pytest.approx(
        cached.metric("frechet_distance").value, rel=1e-9)


def test_samples_drawn_by_the_sample_command(tiny_set_digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "drawn.npz"
    result = runner.invoke(app, ["sample", "--set", str(tiny_set_digits), "--schedule",
                                 "even:4", "--n", "32", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    code, output = _run("--samples", out, "--json")
    assert code == 0, output
    assert json.loads(output)["n_samples"] == 32
    assert _metrics(output)["frechet_distance"]["value"] > 0


# ---------------------------------------------------------------- 2-D data


def _points(tmp_path: Path, name: str, shift: float, tag: str) -> Path:
    x = load_data(name, "train", seed=5, n=1000).x + np.float32(shift)
    np.savez(tmp_path / f"{tag}.npz", samples=x, levels=np.int64(0), data=np.array(name))
    return tmp_path / f"{tag}.npz"


def test_cli_2d_same_vs_shifted_with_true_density(tmp_path: Path) -> None:
    code, same = _run("--samples", _points(tmp_path, "8gaussians", 0.0, "a"), "--json")
    assert code == 0, same
    code, shifted = _run("--samples", _points(tmp_path, "8gaussians", 0.7, "b"), "--json")
    assert code == 0, shifted
    s, t = _metrics(same), _metrics(shifted)
    mmd_names = [k for k in s if k.startswith("mmd2_rbf[")]
    assert len(mmd_names) == 5
    for k in mmd_names:
        assert abs(s[k]["value"]) < 0.1 * t[k]["value"]
    for k in ("sliced_w1", "energy_distance"):
        assert abs(s[k]["value"]) < 0.3 * t[k]["value"]
    ref = s["reference_mean_log_density"]
    mine = s["samples_mean_log_density"]
    assert abs(mine["value"] - ref["value"]) < 4 * np.hypot(mine["se"], ref["se"])
    assert t["samples_mean_log_density"]["value"] < ref["value"] - 0.5
    assert json.loads(same)["kind"] == "points"


def test_2d_off_support_share_and_no_density_for_moons(tmp_path: Path) -> None:
    report = evaluate_samples(_points(tmp_path, "checkerboard", 1.0, "c"), None, "test", 0)
    assert 0.2 < report.metric("samples_off_support").value < 0.8
    moons = evaluate_samples(_points(tmp_path, "moons", 0.0, "m"), None, "test", 0)
    assert not any("log_density" in m.name for m in moons.metrics)
    assert moons.reference_cache is not None and Path(moons.reference_cache).is_file()
    again = evaluate_samples(_points(tmp_path, "moons", 0.0, "m"), None, "test", 0,
                             cache_dir=tmp_path / "elsewhere")  # computed afresh
    assert again.metrics == moons.metrics


# ---------------------------------------------------------------- Inception glue


class _Unpicklable:
    """Anything but tensors must never be unpickled from a weights file."""


def _fake_pytorch_fid(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in for pytorch_fid.inception: builds from load_state_dict_from_url."""
    pkg, mod = types.ModuleType("pytorch_fid"), types.ModuleType("pytorch_fid.inception")

    def load_state_dict_from_url(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        raise AssertionError("the network must not be downloaded")

    class InceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, blocks: list[int]) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3 * 64, 32)  # 32 features keep the test fast
            self.head.load_state_dict(mod.load_state_dict_from_url("url"))

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            assert x.shape[1] == 3 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
            return [torch.relu(self.head(x.flatten(1)))[:, :, None, None]]

    mod.load_state_dict_from_url = load_state_dict_from_url  # type: ignore[attr-defined]
    mod.InceptionV3 = InceptionV3  # type: ignore[attr-defined]
    pkg.inception = mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pytorch_fid", pkg)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", mod)
    return mod


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None,
                    reason="torch-fidelity installed: it would be preferred over the fake")
def test_inception_path_uses_the_local_weights_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _fake_pytorch_fid(monkeypatch)
    original = mod.load_state_dict_from_url
    gen = torch.Generator().manual_seed(0)
    weights = tmp_path / "inception.safetensors"
    save_file({"weight": torch.randn(32, 192, generator=gen) * 0.1,
               "bias": torch.zeros(32)}, str(weights))
    x_train, _ = load_digits_split("train")
    path = _save(tmp_path / "s.npz", _levels(x_train[:100]))
    report = evaluate_samples(path, "digits", "test", 0, features="inception", weights=weights)
    assert report.features == "inception/pytorch-fid"
    assert report.classifier_sha256 == sha256_file(weights)
    assert report.classifier_accuracy is None
    fd = report.metric("frechet_distance").value
    assert np.isfinite(fd) and fd > 0  # train examples against the test split differ
    assert mod.load_state_dict_from_url is original  # the patch is undone
    pickled = tmp_path / "inception.pth"
    torch.save({"weight": _Unpicklable()}, pickled)
    with pytest.raises(CheckpointError, match="weights-only"):
        evaluate_samples(path, "digits", "test", 0, features="inception", weights=pickled)


@pytest.mark.skipif(any(importlib.util.find_spec(m) is not None
                        for m in ("torch_fidelity", "pytorch_fid")),
                    reason="an Inception extra is installed")
def test_inception_without_extras_says_what_to_install(tmp_path: Path) -> None:
    x_test, _ = load_digits_split("test")
    path = _save(tmp_path / "s.npz", _levels(x_test[:20]))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, out = _run("--samples", path, "--features", "inception", "--weights", weights)
    assert code == 2 and "pip install torch-fidelity" in out and "Traceback" not in out


# ---------------------------------------------------------------- bad input


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str], str]]:
    x_test, _ = load_digits_split("test")
    k = _levels(x_test[:40])
    text = tmp_path / "text.npz"
    text.write_text("hello")
    np.save(tmp_path / "array.npy", k)
    np.savez(tmp_path / "nokey.npz", images=k)
    pts = tmp_path / "pts.npz"
    np.savez(pts, samples=np.zeros((40, 2), np.float32), data=np.array("8gaussians"))
    nan = tmp_path / "nan.npz"
    np.savez(nan, samples=np.full((40, 2), np.nan, np.float32), data=np.array("8gaussians"))
    ints = tmp_path / "ints.npz"
    np.savez(ints, samples=np.zeros((40, 2), np.int64), data=np.array("8gaussians"))
    noname = tmp_path / "noname.npz"
    np.savez(noname, samples=k)
    d = ["--data", "digits"]
    return {
        "missing file": (tmp_path / "absent.npz", d, "does not exist"),
        "not an npz": (text, d, "not a readable .npz"),
        "npy file": (tmp_path / "array.npy", d, "not an .npz"),
        "missing key": (tmp_path / "nokey.npz", d, "no 'samples' array"),
        "wrong shape": (_save(tmp_path / "shape.npz", k[:, 0]), d, "shape"),
        "wrong dtype": (_save(tmp_path / "dtype.npz", k.astype(np.float32)), d, "uint8"),
        "level too high": (_save(tmp_path / "high.npz", k + 1), d, "level index 17"),
        "levels key": (_save(tmp_path / "lv.npz", k, levels=256), d, "levels=256"),
        "too few": (_save(tmp_path / "few.npz", k[:3]), d, "at least"),
        "2-D vs digits": (pts, d, "drawn for '8gaussians'"),
        "2-D NaN": (nan, [], "NaN"),
        "2-D integers": (ints, [], "dtype int64"),
        "no data name": (noname, [], "pass --data"),
        "inception without weights": (_save(tmp_path / "ok.npz", k),
                                      ["--features", "inception"], "--weights"),
        "weights without inception": (tmp_path / "ok.npz", ["--weights", str(text)],
                                      "--features"),
        "inception on 2-D data": (pts, ["--features", "inception"], "raw coordinates"),
        "unknown split": (tmp_path / "ok.npz", ["--split", "val"], "split"),
    }


def test_bad_input_exits_2_with_one_sentence(tmp_path: Path) -> None:
    for case, (path, extra, phrase) in _bad_files(tmp_path).items():
        code, out = _run("--samples", path, *extra)
        lines = [line for line in out.splitlines() if line.strip()]
        assert code == 2, (case, out)
        assert len(lines) == 1 and lines[0].startswith("error:"), (case, out)
        assert phrase in out, (case, out)
