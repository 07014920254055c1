"""benchmarks/bench_sets.py runs end to end in its --quick mode: five sets at equal
compute, each with full-chain and DP bits/dim (positive standard errors) and FDs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_bench_sets_quick_json(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its _common helpers
    res = importlib.import_module("bench_sets").main(["--quick", "--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(res))
    assert res["benchmark"] == "sets" and res["settings"]["quick"] is True
    sets = res["sets"]
    assert [r["name"] for r in sets] == ["single", "uniform-4", "snr-4", "cluster-4",
                                         "multidecoder-3"]
    T, K = res["settings"]["T"], res["settings"]["K"]
    for r in sets:
        assert r["ranges"][0][0] == 1 and r["ranges"][-1][1] == T
        assert len(r["ranges"]) == r["members"]
        for key in ("full", "dp"):
            assert r[key]["bpd"] > 0 and r[key]["se"] > 0, (r["name"], key)
        assert r["dp"]["K"] == K and len(r["dp"]["timesteps"]) == K + 1
        assert r["fd_full"] > 0 and r["fd_dp"] > 0
    # equal training compute: steps x parameters per network call
    assert len({r["compute"] for r in sets}) == 1
    md = sets[-1]
    assert md["multidecoder"] and md["params_stored"] > md["params_per_call"]
    assert res["reference_fd"] > 0
