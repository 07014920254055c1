"""inspect reads all three file kinds; dp:K with --costs refuses tables that do not fit."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.costs.build import build_cost_table
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import CostTable, write_cost_table
from ddpm_tools.data import load_data
from ddpm_tools.schedules.schedule_file import Schedule, write_schedule
from ddpm_tools.sets import load_set


def test_inspect_cost_table_and_schedule(tiny_set_2d, tmp_path):
    runner = CliRunner()
    table = build_cost_table(load_set(tiny_set_2d), load_data("8gaussians", "train"),
                             tmp_path / "c.safetensors", CostSettings(samples=16)).table
    res = runner.invoke(app, ["inspect", str(tmp_path / "c.safetensors"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["T"] == 20 and info["prior_finite_at"] == [20] and info["n_samples"] == 16
    assert info["full_chain_bpd"] > 0 and info["set_sha256"] == table.set_sha256
    write_schedule(tmp_path / "s.json", Schedule(20, 2, np.array([0, 7, 20]), 1.5, "dp", {}))
    res = runner.invoke(app, ["inspect", str(tmp_path / "s.json"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["diffusers_timesteps"] == [19, 6]
    for bad, msg in [(tmp_path / "nope.json", "does not exist"),
                     (tmp_path / "x.txt", "neither")]:
        if bad.suffix == ".txt":
            bad.write_text("hello")
        res = runner.invoke(app, ["inspect", str(bad)])
        assert res.exit_code == 2 and msg in res.output


def test_dp_with_costs_checks_T_set_and_split(tiny_set_2d, tmp_path):
    runner = CliRunner()
    cset = load_set(tiny_set_2d)
    good = tmp_path / "train.safetensors"
    build_cost_table(cset, load_data("8gaussians", "train"), good, CostSettings(samples=32))
    test = tmp_path / "test.safetensors"
    build_cost_table(cset, load_data("8gaussians", "test"), test, CostSettings(samples=32))
    other_T = tmp_path / "T30.safetensors"
    L = np.full((31, 31), 1.0)
    prior = np.full(31, np.inf)
    prior[30] = 0.0
    write_cost_table(other_T, CostTable(L=L, prior=prior, T=30, dims=2, split="train"))
    other_set = tmp_path / "other.safetensors"
    write_cost_table(other_set, CostTable(L=np.ones((21, 21)), prior=np.r_[np.full(20, np.inf),
                                          0.0], T=20, dims=2, split="train",
                                          set_sha256="0" * 64))
    base = ["eval-bpd", "--set", str(tiny_set_2d), "--data", "8gaussians", "--schedule",
            "dp:3", "--samples", "50", "--json"]
    res = runner.invoke(app, base + ["--costs", str(good)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["budget"] == 3
    for path, msg in [(other_T, "T = 30"), (other_set, "another set"), (test, "test split")]:
        res = runner.invoke(app, base + ["--costs", str(path)])
        assert res.exit_code == 2 and msg in res.output, res.output
