"""The quick demo end to end: the report's numbers are sane and every picture exists."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddpm_tools.cli.main import app


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["results"]) == {"digits", "8gaussians"}
    for data, r in rep["results"].items():
        assert set(r["sets"]) == {"4-interval", "single"}
        for s in r["sets"].values():
            rows = s["pred"]["rows"]
            assert [row["K"] for row in rows] == [4, 8, 16, 32, 64, 128, 256]
            for row in rows:  # the DP is optimal on the table it was given
                assert row["dp_pred"] <= row["even_pred"] + 1e-9, (data, row)
                assert row["dp_pred"] <= row["quadratic_pred"] + 1e-9, (data, row)
                assert row["dp_timesteps"][0] == 0 and len(row["dp_timesteps"]) == row["K"] + 1
            for label, m in s["measured"].items():
                assert m["se"] > 0 and m["n"] > 1, (data, label)
                assert m["bpd"] == pytest.approx(m["prior"] + m["steps"] + m["decoder"])
            for sq in s["samples"].values():
                assert (out / data / sq["png"]).stat().st_size > 0
                assert sq["metrics"]
        for pic in r["pictures"]:
            assert (out / pic).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(r["pictures"]) == 4
    text = (out / "report.md").read_text()
    assert "DP measured" in text and "![" in text
    # a rerun reuses every stage (nothing retrained, recomputed or redrawn from scratch)
    before = (out / "digits" / "digits-4int-eval.json").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "digits" / "digits-4int-eval.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_variance_comparison_on_tiny_digits_sets(tmp_path):
    """demo --variances' stage on tiny sets: every variance and set has DP/even rows with
    standard errors, the paired difference, dp:32 samples scored, and the report section."""
    from ddpm_tools.demo.report import write_report
    from ddpm_tools.demo.run import DataPlan, DemoConfig, cached
    from ddpm_tools.demo.variances import compare_variances

    plan = DataPlan("digits", 40, "linear", "learned_range", 32, 20, 16, 16, 16)
    cfg = DemoConfig(quick=True, workers=1, variances=True)
    comp = compare_variances(plan, cfg, tmp_path, cached)
    assert set(comp) == {"4-interval, trained learned_range", "single, trained learned_range",
                         "4-interval, trained fixed_large", "single, trained fixed_large"}
    for name, s in comp.items():
        per = s["variances"]
        assert list(per) == ["trained", "fixed_small", "fixed_large", "analytic", "mse"]
        assert per["trained"]["variance"] == name.split("trained ")[1]
        for v, r in per.items():
            assert [row["K"] for row in r["rows"]] == [4, 8, 16, 32], (name, v)
            for row in r["rows"]:
                assert row["dp"]["se"] > 0 and row["even"]["se"] > 0
                assert row["even_minus_dp"]["bpd"] == pytest.approx(
                    row["even"]["bpd"] - row["dp"]["bpd"])
            assert r["samples"]["metrics"], (name, v)
    path = write_report(tmp_path, {}, 1.0, True, comp)
    text = path.read_text()
    assert "Reverse variances" in text and "| 32 | even - DP |" in text
