"""Bad input never ends in a traceback, a hang or a half-done run: one sentence, exit 2.

Output paths are checked before the work, sizes against the documented limits
(``ddpm_tools.core.limits``), option-parser rejections are one sentence too."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddpm_tools.cli.main import app

runner = CliRunner()
MAX_SEED = 2**63 - 1  # ddpm_tools.core.limits (literal here so that each test fails on its own)
MAX_T = 100_000


def test_the_limits_are_those_documented():
    from pathlib import Path

    from ddpm_tools.core import limits

    assert (limits.MAX_SEED, limits.MAX_T) == (MAX_SEED, MAX_T)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "100,000" in readme and "2**63 - 1" in readme


def one_sentence(res, *words):
    """Exit 2, no traceback, no usage box, one line naming ``words``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "Usage:" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for w in words:
        assert w in lines[0], res.output
    return lines[0]


TRAIN = ["train", "--data", "moons", "--T", "30", "--schedule", "cosine", "--steps", "2",
         "--workers", "1"]


def test_train_out_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_sentence(runner.invoke(app, TRAIN + ["--out", str(f)]), str(f), "folder")


def test_sample_and_cost_table_out_is_a_folder_refused_before_the_work(tiny_set_2d, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    one_sentence(runner.invoke(app, ["sample", "--set", str(tiny_set_2d), "--schedule",
                                     "even:3", "--out", str(d)]), str(d), "folder")
    one_sentence(runner.invoke(app, ["cost-table", "--set", str(tiny_set_2d), "--data",
                                     "8gaussians", "--samples", "4", "--out", str(d)]),
                 str(d), "folder")
    assert not list(tmp_path.glob("*.partial"))  # nothing computed


@pytest.mark.parametrize("cmd", ["train", "sample"])
def test_seed_out_of_range(cmd, tiny_set_2d, tmp_path):
    for seed in (str(10**23), str(MAX_SEED + 1), "-1"):
        args = (TRAIN + ["--out", str(tmp_path / "s")] if cmd == "train" else
                ["sample", "--set", str(tiny_set_2d), "--schedule", "even:3", "--out",
                 str(tmp_path / "x.npz")])
        one_sentence(runner.invoke(app, args + ["--seed", seed]), "--seed", str(MAX_SEED))


def test_large_seed_within_range_trains(tmp_path):
    res = runner.invoke(app, TRAIN + ["--out", str(tmp_path / "s"), "--intervals", "2",
                                      "--seed", str(MAX_SEED)])
    assert res.exit_code == 0, res.output


def test_sample_n_that_cannot_fit_is_refused(tiny_set_2d, tmp_path):
    one_sentence(runner.invoke(app, ["sample", "--set", str(tiny_set_2d), "--schedule",
                                     "even:3", "--n", str(10**15), "--out",
                                     str(tmp_path / "x.npz")]), "memory", "--n")


def test_huge_integer_in_schedule_and_manifest(tiny_set_2d, tmp_path):
    sched = tmp_path / "s.json"
    sched.write_text('{"T": 1' + "0" * 5000 + ', "budget": 2, "timesteps": [0, 1, 2], '
                     '"method": "given"}')
    one_sentence(runner.invoke(app, ["inspect", str(sched)]), str(sched))
    sched.write_text(json.dumps({"T": 20, "budget": 2, "timesteps": [0, 10**30, 20],
                                 "method": "given"}))
    one_sentence(runner.invoke(app, ["inspect", str(sched)]), str(sched))
    s = tmp_path / "set"
    s.mkdir()
    man = json.loads((tiny_set_2d / "ddpm_set.json").read_text())
    text = json.dumps(man).replace('"t_lo": 1,', '"t_lo": 1' + "0" * 5000 + ",", 1)
    (s / "ddpm_set.json").write_text(text)
    one_sentence(runner.invoke(app, ["inspect", str(s)]), "manifest")


def test_T_and_intervals_have_an_upper_bound(tmp_path):
    out = str(tmp_path / "s")
    one_sentence(runner.invoke(app, TRAIN[:3] + ["--out", out, "--T", "1000000000"]),
                 "--T", str(MAX_T))
    one_sentence(runner.invoke(app, TRAIN[:3] + ["--out", out, "--T", str(MAX_T + 1),
                                                 "--schedule", "cosine"]), str(MAX_T))
    one_sentence(runner.invoke(app, TRAIN + ["--out", out, "--intervals", "31"]),
                 "--intervals")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args,words", [
    (["train", "--data", "moons", "--out", "x", "--steps", "abc"],
     ["'--steps'", "integer", "'abc'"]),
    (["train", "--out", "x"], ["'--data'", "missing"]),
    (["sample", "--bogus", "1"], ["--bogus"]),
    (["train", "--data", "moons", "--out", "x", "--intervals", "0"], ["'--intervals'", "'0'"]),
    (["eval-bpd", "--json", "--set"], ["--set"]),
])
def test_option_parser_rejections_are_one_sentence(args, words):
    line = one_sentence(runner.invoke(app, args), *words)
    assert "--help" in line
