"""``ddpm-tools optimize-schedule`` end to end on a synthetic cost table."""

import json
import re
import sys

import numpy as np
import pytest
from safetensors.numpy import save
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.costs.table_file import CostTable, write_cost_table
from ddpm_tools.errors import MissingExtraError
from ddpm_tools.io.plots import check_plot_target
from ddpm_tools.schedules.schedule_file import read_schedule

T = 40
runner = CliRunner()


def synthetic_L(T: int = T) -> np.ndarray:
    """Cost of t -> s growing with the jump (t - s)^2, cheaper at large t, plus noise."""
    rng = np.random.default_rng(0)
    n = T + 1
    s, t = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.where(s < t, 0.05 * (t - s) ** 2 / (1.0 + t) + 0.02 * rng.random((n, n)), np.inf)


@pytest.fixture
def costs(tmp_path):
    prior = np.full(T + 1, np.inf)
    prior[T] = 0.3
    path = tmp_path / "costs.safetensors"
    write_cost_table(path, CostTable(L=synthetic_L(), prior=prior, T=T, dims=16, n_samples=32,
                                     split="test", seed=0, variance="fixed_small",
                                     data="digits"))
    return path


def run(*args):
    return runner.invoke(app, ["optimize-schedule", *map(str, args)])


def test_all_budgets_json_and_files(costs, tmp_path):
    out = tmp_path / "schedules"
    r = run("--costs", costs, "--all-budgets", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["T"] == T and obj["dims"] == 16 and "solve_seconds" in obj
    scheds = obj["schedules"]
    assert [s["budget"] for s in scheds] == list(range(1, T + 1))
    for s in scheds:
        K = s["budget"]
        assert set(s) == {"budget", "timesteps", "predicted_nats", "predicted_bpd", "even_bpd",
                          "quadratic_bpd"}
        assert len(s["timesteps"]) == K + 1 and s["timesteps"][0] == 0
        assert s["timesteps"][-1] == T
        assert s["predicted_bpd"] == pytest.approx(s["predicted_nats"] / (16 * np.log(2)))
        assert s["predicted_bpd"] <= s["even_bpd"] + 1e-12
        assert s["predicted_bpd"] <= s["quadratic_bpd"] + 1e-12
        f = read_schedule(out / f"schedule_K{K}.json")
        assert f.method == "dp" and f.timesteps.tolist() == s["timesteps"]
        assert f.predicted_bpd == s["predicted_bpd"] and f.source["costs"] == str(costs)
    assert sum(s["predicted_bpd"] < s["even_bpd"] - 1e-9 for s in scheds) > T // 2


def test_table_output_and_plot(costs, tmp_path):
    plot = tmp_path / "frontier.png"
    r = run("--costs", costs, "--budget", 4, "--budget", 32, "--plot", plot)
    assert r.exit_code == 0, r.output
    for text in ("DP bits/dim", "even bits/dim", "quadratic bits/dim", "…", "wrote plot"):
        assert text in r.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(costs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    r = run("--costs", costs, "--budget", 4, "--plot", tmp_path / "f.png")
    assert r.exit_code == 2
    assert "needs matplotlib; install the plot extra: pip install 'ddpm-tools[plot]'" in r.output
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'ddpm-tools[plot]'")):
        check_plot_target(tmp_path / "f.png")


def bad_table(tmp_path, kind):
    prior = np.full(T + 1, np.inf)
    prior[T] = 0.3
    L = synthetic_L()
    meta = {"T": str(T), "dims": "16"}
    if kind == "nan":
        L[3, 17] = np.nan
    elif kind == "shape":
        meta["T"] = str(T + 5)
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(save({"L": L, "prior": prior}, metadata=meta))
    return path


@pytest.mark.parametrize("case,message", [
    ("budget0", "budget 0 is outside 1..40"),
    ("too_large", "budget 41 is outside 1..40"),
    ("nan", r"has nan at L[3, 17]"),
    ("not_table", "is not a safetensors cost table"),
    ("shape", "its metadata says T = 45"),
    ("unwritable_out", "cannot create output folder"),
    ("no_budget", "give either --budget K"),
    ("with_set", "does not exist"),
    ("set_without_data", "--set and --data go together"),
    ("costs_and_set", "exactly one of the two"),
    ("no_costs", "pass either --costs FILE"),
    ("plot_format", "cannot tell the image format"),
])
def test_bad_input_exits_2_with_one_sentence(costs, tmp_path, case, message):
    args = ["--costs", costs, "--budget", 4]
    if case == "budget0":
        args = ["--costs", costs, "--budget", 0]
    elif case == "too_large":
        args = ["--costs", costs, "--budget", 8, "--budget", T + 1]
    elif case in ("nan", "shape"):
        args = ["--costs", bad_table(tmp_path, case), "--budget", 4]
    elif case == "not_table":
        (tmp_path / "notes.txt").write_text("not a table\n")
        args = ["--costs", tmp_path / "notes.txt", "--budget", 4]
    elif case == "unwritable_out":
        (tmp_path / "file").write_text("")
        args += ["--out", tmp_path / "file" / "sub"]
    elif case == "no_budget":
        args = ["--costs", costs]
    elif case == "with_set":
        args = ["--set", tmp_path / "no-set", "--data", "digits", "--budget", 4]
    elif case == "set_without_data":
        args = ["--set", tmp_path, "--budget", 4]
    elif case == "costs_and_set":
        args += ["--set", tmp_path, "--data", "digits"]
    elif case == "no_costs":
        args = ["--budget", 4]
    elif case == "plot_format":
        args += ["--plot", tmp_path / "frontier.xyz"]
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.output


def test_set_and_data_build_and_reuse_the_cached_table(tiny_set_2d):
    r = run("--set", tiny_set_2d, "--data", "8gaussians", "--samples", 32, "--budget", 3,
            "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)["schedules"][0]
    cached = list((tiny_set_2d / "costs").glob("8gaussians-train-n32-seed0.safetensors"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    r = run("--set", tiny_set_2d, "--data", "8gaussians", "--samples", 32, "--budget", 3,
            "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["schedules"][0] == first
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not rebuilt
