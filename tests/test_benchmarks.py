"""The benchmark scripts run end to end in their tiny --quick mode through their
``main(argv) -> dict`` entry points, print the same JSON they return, and report positive
numbers under the expected keys (no timing assertions: speed targets live in the scripts)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(name: str, monkeypatch, capsys) -> dict:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their _common helpers
    res = importlib.import_module(name).main(["--quick", "--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(res))
    return res


def _positive(d: dict, keys: list[str]) -> None:
    for k in keys:
        assert isinstance(d[k], int | float) and d[k] > 0, (k, d[k])


def _machine(res: dict) -> None:
    m = res["machine"]
    assert m["cpus"] >= 1 and m["torch"] and m["torch_threads"] >= 1 and m["platform"]


def test_bench_train_quick_json(monkeypatch, capsys):
    res = _run("bench_train", monkeypatch, capsys)
    _machine(res)
    assert res["benchmark"] == "train" and res["settings"]["quick"] is True
    (w,) = res["workloads"]
    assert w["workload"] == "2d-mlp" and w["members"] == 2
    runs = w["runs"]
    assert [(r["workers"], r["threads_per_worker"]) for r in runs][1:] == [(1, 1), (2, 1)]
    for r in runs:
        _positive(r, ["startup_seconds", "seconds", "members_per_hour", "loop_seconds"])
        # --quick runs are all start-up: no long-run rate is claimed from them
        lr = r["long_run_members_per_hour"]
        assert lr is None or lr > 0
    # the 2-worker run (1 thread each) must train exactly what the 1-thread run trains
    assert w["same_weights_as_1_thread"] is True
    _positive(w, ["speedup_wall"])
    assert (w["speedup"] is None) == (w["speedup_ok"] is None)
    assert res["speedup_target"] == 1.7 and set(res["speedup_ok"]) == {"2d-mlp"}
    m = res["member_vs_baseline"]
    _positive(m, ["member_it_s", "baseline_it_s", "member_it_s_cpu", "baseline_it_s_cpu",
                  "ratio", "ratio_wall", "steps", "threads"])
    assert m["baseline_t_range"] == [1, res["settings"]["T"]]
    assert 1 == m["member_t_range"][0] < m["member_t_range"][1] < res["settings"]["T"]


def test_bench_eval_quick_json(monkeypatch, capsys):
    res = _run("bench_eval", monkeypatch, capsys)
    _machine(res)
    assert res["benchmark"] == "eval" and res["settings"]["quick"] is True
    f, k = res["full_chain"], res["k_step"]
    _positive(f, ["ours_cpu_seconds", "loop_cpu_seconds", "ours_wall_seconds",
                  "loop_wall_seconds", "ours_examples_per_s", "loop_examples_per_s",
                  "speedup", "speedup_wall", "ours_bpd", "ours_bpd_se", "loop_bpd"])
    # the two implementations compute the same totals (not a timing assertion)
    assert f["agree"] is True and f["max_abs_diff_bpd"] <= f["agree_tolerance_bpd"]
    assert set(f["diffs_bpd"]) == {"bpd", "bpd_se", "prior_bpd", "steps_bpd", "decoder_bpd"}
    _positive(k, ["K", "cpu_seconds", "wall_seconds", "examples_per_s", "bpd", "time_ratio",
                  "expected_ratio"])
    assert k["expected_ratio"] == k["K"] / res["settings"]["T"]
    assert isinstance(f["ok"], bool) and isinstance(k["ok"], bool)


def test_run_all_only_keeps_the_other_benchmarks_results(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    run_all = importlib.import_module("run_all")
    old_info = {"date": "2026-01-01 00:00 UTC", "quick": False, "load_start": [1.0, 1.0, 1.0],
                "load_end": [2.0, 2.0, 2.0]}
    (tmp_path / "results.json").write_text(json.dumps({"info": old_info, "results": {
        "dp": {"result": {"benchmark": "dp", "x": 1.5}, "seconds": 3.0},
        "train": {"result": {"benchmark": "train", "x": 0.5}, "seconds": 9.0}}}))
    new = {"train": {"date": "2026-11-22 05:00 UTC", "quick": False, "seconds": 7.0,
                     "load_start": [0.1, 0.2, 0.3], "load_end": [0.4, 0.5, 0.6],
                     "result": {"benchmark": "train", "x": 2.5}}}
    merged = run_all.merge_previous(tmp_path / "results.json", new, {})
    assert list(merged) == ["dp", "train"]  # the benchmarks' order, not the run's
    assert merged["train"] == new["train"]
    assert merged["dp"]["result"]["x"] == 1.5 and merged["dp"]["date"] == old_info["date"]
    info = {"machine": {"cpus": 2, "platform": "p", "python": "3", "torch": "t",
                        "torch_threads": 2}}
    run_all.write_markdown(tmp_path / "results.md", merged, info)
    md = (tmp_path / "results.md").read_text()
    assert "Run 2026-01-01 00:00 UTC" in md and "Run 2026-11-22 05:00 UTC" in md
    assert md.count("predates the script's summary") == 2  # old formats: a pointer, no dump
    assert run_all.merge_previous(tmp_path / "missing.json", new, {}) == new


def test_bench_costs_quick_json_and_its_summary_table(monkeypatch, capsys, tmp_path):
    res = _run("bench_costs", monkeypatch, capsys)
    _machine(res)
    (c,) = res["configs"]
    _positive(c, ["fast_table_s", "direct_table_s", "speedup", "pieces", "points"])
    assert c["ok"] is True and c["max_rel_err"] < 1e-10
    whole, cols = res["tables"]  # the table against its network calls: whole, then columns
    for tab in (whole, cols):
        _positive(tab, ["table_s", "floor_s", "ratio"])
        assert tab["ratio"] == pytest.approx(tab["table_s"] / tab["floor_s"])
    assert whole["columns"] == [] and whole["target"] and isinstance(whole["ok"], bool)
    assert len(cols["columns"]) == len(cols["column_s"]) == len(cols["call_s"]) >= 2
    assert cols["ok"] is None and cols["D"] == 3072
    run_all = importlib.import_module("run_all")
    entry = {"date": "2026-11-30 06:00 UTC", "quick": True, "seconds": 1.0,
             "load_start": None, "load_end": None, "result": res}
    run_all.write_markdown(tmp_path / "results.md", {"costs": entry}, {"machine": res["machine"]})
    md = (tmp_path / "results.md").read_text()
    assert "| what was measured | ours | anchor or floor | ratio | target | met |" in md
    assert "| learned_range sums, whole table: D=256, T=200" in md and "| yes |" in md
    assert "| learned_range cost table vs its network calls: U-Net, D=3072, T=30" in md
