"""Input that used to give nonsense with exit 0 is refused: negative cost-table entries
(per the table's kind), non-finite weights or network outputs, a manifest's wrong T."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.costs.table_file import CostTable, read_cost_table, write_cost_table
from ddpm_tools.errors import BadInputError, CheckpointError
from ddpm_tools.io.files import sha256_file
from ddpm_tools.sets import Denoiser, load_set

runner = CliRunner()
T = 10


def _table(path, L, data, decoder=None):
    prior = np.full(T + 1, np.inf)
    prior[T] = 0.1
    write_cost_table(path, CostTable(L=L, prior=prior, T=T, dims=2, data=data, decoder=decoder))
    return path


def _L(value=0.5):
    return np.where(np.triu(np.ones((T + 1, T + 1), bool), 1), value, np.inf)


def test_negative_kl_entry_is_refused(tmp_path):
    L = _L()
    L[3, 7] = -2.0
    p = _table(tmp_path / "c.safetensors", L, "8gaussians")
    with pytest.raises(BadInputError, match=r"L\[3, 7\].*KL"):
        read_cost_table(p)
    res = runner.invoke(app, ["optimize-schedule", "--costs", str(p), "--budget", "3"])
    assert res.exit_code == 2 and "L[3, 7]" in res.output, res.output


@pytest.mark.parametrize("data,decoder,ok", [
    ("digits", None, False), ("folder:x", None, False), (None, "discrete", False),
    ("8gaussians", None, True), ("npz:x.npz", "continuous", True)])
def test_negative_decoder_row_depends_on_the_kind_of_data(tmp_path, data, decoder, ok):
    L = _L()
    L[0, 4] = -3.0  # a density may exceed 1: -log p < 0 is fine for continuous data only
    p = _table(tmp_path / "c.safetensors", L, data, decoder)
    if ok:
        assert read_cost_table(p).L[0, 4] == -3.0
    else:
        with pytest.raises(BadInputError, match=r"L\[0, 4\].*discrete"):
            read_cost_table(p)


def test_rounding_sized_negative_entries_pass(tmp_path):
    L = _L()
    L[2, 5] = -1e-9
    read_cost_table(_table(tmp_path / "c.safetensors", L, "digits"))


def _tampered(tiny_set_2d, tmp_path, change):
    """A copy of the set whose member 1 weights are changed and re-hashed in the manifest."""
    s = tmp_path / "set"
    shutil.copytree(tiny_set_2d, s)
    w = s / "member_0001.safetensors"
    save_file({k: change(v) for k, v in load_file(str(w)).items()}, str(w))
    man = json.loads((s / "ddpm_set.json").read_text())
    man["members"][1]["sha256"] = sha256_file(w)
    (s / "ddpm_set.json").write_text(json.dumps(man))
    return s


def test_nan_weights_with_matching_sha256_are_refused(tiny_set_2d, tmp_path):
    s = _tampered(tiny_set_2d, tmp_path, lambda v: torch.full_like(v, float("nan")))
    res = runner.invoke(app, ["sample", "--set", str(s), "--schedule", "even:4", "--out",
                              str(tmp_path / "x.npz"), "--n", "8"])
    assert res.exit_code == 2 and "NaN" in res.output and "member 1" in res.output, res.output
    assert not (tmp_path / "x.npz").exists()
    res = runner.invoke(app, ["eval-bpd", "--set", str(s), "--data", "8gaussians",
                              "--schedule", "even:4", "--samples", "8"])
    assert res.exit_code == 2 and "NaN" in res.output, res.output


def test_non_finite_network_output_names_member_and_t(tiny_set_2d, tmp_path):
    s = _tampered(tiny_set_2d, tmp_path, lambda v: torch.full_like(v, 3e38))
    den = Denoiser(load_set(s))
    t_hi = load_set(s).manifest.members[1].t_hi
    with pytest.raises(CheckpointError, match=rf"member 1 .*t = {t_hi}\b"):
        den(torch.zeros(3, 2), np.array([1, t_hi, 1]))


@pytest.mark.parametrize("T_value", ["abc", 50, None, 1.5])
def test_manifest_schedule_T_is_checked(tiny_set_2d, tmp_path, T_value):
    s = tmp_path / "set"
    shutil.copytree(tiny_set_2d, s)
    man = json.loads((s / "ddpm_set.json").read_text())
    man["schedule"]["T"] = T_value
    (s / "ddpm_set.json").write_text(json.dumps(man))
    res = runner.invoke(app, ["inspect", str(s)])
    assert res.exit_code == 2 and "T" in res.output, res.output
