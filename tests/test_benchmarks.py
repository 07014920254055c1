"""The benchmark scripts run end to end in their tiny --quick mode through their
``main(argv) -> dict`` entry points, print the same JSON they return, and report positive
numbers under the expected keys (no timing assertions: speed targets live in the scripts)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

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
    runs = res["runs"]
    assert [r["workers"] for r in runs] == [1, 1, 2]
    for r in runs:
        _positive(r, ["seconds", "members_per_hour", "loop_seconds", "loop_members_per_hour"])
        assert isinstance(r["same_weights_as_1_thread"], bool)
    # the 2-worker run (1 thread each) must train exactly what the 1-thread run trains
    assert runs[2]["same_weights_as_1_thread"] is True
    assert {x["over"] for x in res["speedups"]} == {r["run"] for r in runs[:2]}
    for x in res["speedups"]:
        _positive(x, ["wall", "loops_only"])
        assert isinstance(x["ok"], bool)
    _positive(res, ["speedup", "speedup_target"])
    assert isinstance(res["speedup_ok"], bool) and "worker_startup_seconds" in res
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
