"""Cost-table files: round trip, every bad-file case, predictions, optimize_table."""

import math

import numpy as np
import pytest
from safetensors.numpy import save

from ddpm_tools.core.strides import even_stride, quadratic_stride
from ddpm_tools.costs.table_file import (
    CostTable,
    predicted_bpd,
    predicted_nats,
    read_cost_table,
    write_cost_table,
)
from ddpm_tools.errors import BadInputError
from ddpm_tools.schedules.optimize import optimize_table

T = 12


def make_table(**kw) -> CostTable:
    rng = np.random.default_rng(0)
    n = T + 1
    s, t = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    L = np.where(s < t, 0.1 * (t - s) ** 2 / (1.0 + t) + 0.01 * rng.random((n, n)), np.inf)
    prior = np.full(n, np.inf)
    prior[T] = 0.25
    fields = dict(L=L, prior=prior, T=T, dims=4, L_se=0.01 * rng.random((n, n)),
                  prior_se=np.zeros(n), n_samples=64, split="test", seed=3,
                  variance="fixed_small", set_sha256="ab" * 32, data="digits")
    fields.update(kw)
    return CostTable(**fields)


def test_round_trip(tmp_path):
    a = make_table()
    write_cost_table(tmp_path / "c.safetensors", a)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left
    b = read_cost_table(tmp_path / "c.safetensors")
    for name in ("L", "prior", "L_se", "prior_se"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    for name in ("T", "dims", "n_samples", "split", "seed", "variance", "set_sha256",
                 "version", "data"):
        assert getattr(a, name) == getattr(b, name)
    assert isinstance(b.T, int) and isinstance(b.seed, int) and b.version == "1"


def test_minimal_table_needs_only_T_and_dims(tmp_path):
    a = make_table(L_se=None, prior_se=None, n_samples=None, split=None, seed=None,
                   variance=None, set_sha256=None, data=None)
    write_cost_table(tmp_path / "c.safetensors", a)
    b = read_cost_table(tmp_path / "c.safetensors")
    assert b.L_se is None and b.seed is None and b.split is None and b.T == T


def raw_file(path, tensors, meta):
    path.write_bytes(save(tensors, metadata=meta))
    return path


def good_arrays():
    a = make_table()
    return {"L": a.L, "prior": a.prior}, {"T": str(T), "dims": "4"}


@pytest.mark.parametrize("case,message", [
    ("not_safetensors", r"is not a safetensors cost table"),
    ("missing", r"does not exist"),
    ("folder", r"is a folder, not a file"),
    ("no_L", r"has no tensor 'L'"),
    ("no_prior", r"has no tensor 'prior'"),
    ("float32", r"stores L as float32"),
    ("shape", r"has L of shape \(12, 12\) but its metadata says T = 12"),
    ("prior_shape", r"has prior of shape \(14,\)"),
    ("se_shape", r"has L_se of shape"),
    ("no_T", r"has no 'T' in its metadata"),
    ("bad_dims", r"metadata dims = 'four', not an integer"),
    ("nan", r"has nan at L\[2, 5\]"),
    ("version", r"format version '2'"),
    ("no_finite_path", r"admits no schedule of finite cost"),
])
def test_bad_files(tmp_path, case, message):
    tensors, meta = good_arrays()
    path = tmp_path / "c.safetensors"
    if case == "not_safetensors":
        path.write_text("L,prior\n1,2\n")
    elif case == "folder":
        path.mkdir()
    elif case == "no_L":
        del tensors["L"]
    elif case == "no_prior":
        del tensors["prior"]
    elif case == "float32":
        tensors["L"] = tensors["L"].astype(np.float32)
    elif case == "shape":
        tensors["L"] = tensors["L"][:-1, :-1].copy()
    elif case == "prior_shape":
        tensors["prior"] = np.zeros(T + 2)
    elif case == "se_shape":
        tensors["L_se"] = np.zeros((3, 3))
    elif case == "no_T":
        del meta["T"]
    elif case == "bad_dims":
        meta["dims"] = "four"
    elif case == "nan":
        tensors["L"][2, 5] = np.nan
    elif case == "version":
        meta["version"] = "2"
    elif case == "no_finite_path":
        tensors["prior"] = np.full(T + 1, np.inf)
    if case not in ("not_safetensors", "missing", "folder"):
        raw_file(path, tensors, meta)
    with pytest.raises(BadInputError, match=message) as e:
        read_cost_table(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


def test_nan_below_diagonal_is_accepted(tmp_path):
    tensors, meta = good_arrays()
    tensors["L"][np.tril_indices(T + 1)] = np.nan
    assert read_cost_table(raw_file(tmp_path / "c.safetensors", tensors, meta)).T == T


def test_constructor_checks_shapes():
    with pytest.raises(BadInputError, match="field prior"):
        make_table(prior=np.zeros(3))
    with pytest.raises(BadInputError, match="dims >= 1"):
        make_table(dims=0)


def test_predictions():
    a = make_table()
    tau = [0, 4, 9, 12]
    nats = a.L[0, 4] + a.L[4, 9] + a.L[9, 12] + a.prior[12]
    assert predicted_nats(a, tau) == pytest.approx(nats, rel=1e-15)
    assert predicted_bpd(a, tau) == pytest.approx(nats / (4 * math.log(2)), rel=1e-15)
    assert predicted_nats(a, [0, 4, 9]) == math.inf  # truncated start without a prior
    with pytest.raises(BadInputError):
        predicted_nats(a, [0, 13])


def test_optimize_table_beats_strides():
    a = make_table()
    res = optimize_table(a, None, source={"costs": "c.safetensors"})
    assert [r.schedule.budget for r in res.results] == list(range(1, T + 1))
    assert res.T == T and res.dims == 4
    for r in res.results:
        K = r.schedule.budget
        assert r.schedule.method == "dp" and r.schedule.source["costs"] == "c.safetensors"
        assert r.schedule.source["set_sha256"] == "ab" * 32
        assert r.schedule.predicted_bpd == pytest.approx(predicted_bpd(a, r.schedule.timesteps))
        assert r.even_bpd == pytest.approx(predicted_bpd(a, even_stride(T, K)))
        assert r.quadratic_bpd == pytest.approx(predicted_bpd(a, quadratic_stride(T, K)))
        assert r.schedule.predicted_bpd <= min(r.even_bpd, r.quadratic_bpd)


def test_optimize_table_strides_na_with_truncated_prior():
    prior = np.full(T + 1, np.inf)
    prior[8] = 0.5  # a truncated prior: every stride ending at T costs +inf
    res = optimize_table(make_table(prior=prior), [3], truncate=True)
    (r,) = res.results
    assert r.even_bpd is None and r.quadratic_bpd is None
    assert r.schedule.timesteps[-1] == 8
