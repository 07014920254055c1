"""The end-to-end demo on the built-in data (``ddpm-tools demo``)."""

from __future__ import annotations

import time
from pathlib import Path

from ddpm_tools.demo.report import write_report
from ddpm_tools.demo.run import DemoConfig, cached, run_plan
from ddpm_tools.demo.variances import compare_variances
from ddpm_tools.io.files import ensure_writable_dir
from ddpm_tools.progress import ProgressFn

__all__ = ["DemoConfig", "run_demo"]


def run_demo(cfg: DemoConfig, out: str | Path = "report",
             progress: ProgressFn | None = None) -> Path:
    """Run every stage for every data set and write the report; returns report.md."""
    t0 = time.perf_counter()
    out = Path(out)
    ensure_writable_dir(out)
    results = {plan.data: run_plan(plan, cfg, out, progress) for plan in cfg.plans()}
    comparison = None
    if cfg.variances:
        digits = next(p for p in cfg.plans() if p.data == "digits")
        comparison = compare_variances(digits, cfg, out, cached, progress)
    return write_report(out, results, time.perf_counter() - t0, cfg.quick, comparison)
