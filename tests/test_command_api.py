"""The functions behind the commands: one run loads a set once, optimize-schedule --set
optimizes the table it built, bad option combinations stop before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import ddpm_tools.sets.load as set_loading
from ddpm_tools.costs.build import cache_path
from ddpm_tools.costs.estimate import CostSettings
from ddpm_tools.costs.table_file import read_cost_table
from ddpm_tools.errors import BadInputError
from ddpm_tools.likelihood.run import eval_schedules
from ddpm_tools.sampling.run import sample_schedule
from ddpm_tools.schedules import run as schedule_run
from ddpm_tools.schedules.run import optimize_schedules
from ddpm_tools.sets import load_set

SETTINGS = CostSettings(samples=16, seed=1)


@pytest.fixture
def fresh_set(tiny_set_2d: Path, tmp_path: Path) -> Path:
    """A copy of the tiny set without a cached table (each test builds its own)."""
    p = tmp_path / "set"
    shutil.copytree(tiny_set_2d, p, ignore=shutil.ignore_patterns("costs"))
    return p


def _count_manifest_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    real = set_loading.read_manifest

    def counting(path):  # type: ignore[no-untyped-def]
        calls.append(path)
        return real(path)

    monkeypatch.setattr(set_loading, "read_manifest", counting)
    return calls


def test_eval_bpd_loads_the_set_once(fresh_set: Path, monkeypatch: pytest.MonkeyPatch):
    calls = _count_manifest_reads(monkeypatch)
    res = eval_schedules(fresh_set, "8gaussians", ["dp:3", "dp-truncated:4", "even:3"],
                         samples=20, table_samples=SETTINGS.samples, seed=SETTINGS.seed)
    assert [r.label for r in res.elbo] == ["dp:3", "dp-truncated:4", "even:3"]
    assert cache_path(load_set(fresh_set), "8gaussians", "train", SETTINGS).exists()
    assert len(calls) == 1 + 1  # the run, then the check above


def test_sample_loads_the_set_once(fresh_set: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch):
    calls = _count_manifest_reads(monkeypatch)
    run = sample_schedule(fresh_set, "dp:2", 5, tmp_path / "s.npz",
                          table_samples=SETTINGS.samples, seed=SETTINGS.seed)
    assert run.budget == 2 and run.n == 5 and len(calls) == 1


def test_optimize_with_set_uses_the_table_it_built(fresh_set: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    def no_reading(path):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{path} was read back")

    monkeypatch.setattr(schedule_run, "read_cost_table", no_reading)
    run = optimize_schedules([2, 3, 2], set_dir=fresh_set, data="8gaussians",
                             settings=SETTINGS, out=tmp_path / "sch")
    assert [r.schedule.budget for r in run.result.results] == [2, 3]  # repeats solved once
    assert run.written == [tmp_path / "sch" / "schedule_K2.json",
                           tmp_path / "sch" / "schedule_K3.json"]
    monkeypatch.undo()
    from_file = optimize_schedules([2, 3], costs=run.costs)  # the same schedules from disk
    for a, b in zip(run.result.results, from_file.result.results, strict=True):
        assert np.array_equal(a.schedule.timesteps, b.schedule.timesteps)
        assert a.predicted_nats == b.predicted_nats
    assert read_cost_table(run.costs).set_sha256 == run.result.results[0].schedule.source[
        "set_sha256"]


@pytest.mark.parametrize("kwargs,msg", [
    ({"budgets": [2], "set_dir": Path("s")}, "--set and --data go together"),
    ({"budgets": [2]}, "exactly one of the two"),
    ({"budgets": [2], "all_budgets": True, "costs": Path("c")}, "--all-budgets"),
    ({"costs": Path("c")}, "--all-budgets"),
])
def test_optimize_option_combinations_fail_before_any_work(tmp_path: Path, kwargs, msg):
    out = tmp_path / "never"
    with pytest.raises(BadInputError, match=msg):
        optimize_schedules(out=out, **kwargs)
    assert not out.exists()
