"""The demo's report: ``report.md`` (tables, with what each number means), PNGs, JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ddpm_tools.demo.variances import variance_section
from ddpm_tools.io.files import atomic_write_json, atomic_write_text
from ddpm_tools.io.plots import lines_png, new_figure, save_figure


def _pm(m: dict[str, Any] | None) -> str:
    return "n/a" if m is None else f"{m['bpd']:.3f} ± {m['se']:.3f}"


def _f(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def draw_pictures(out: Path, data: str, res: dict[str, Any]) -> list[str]:
    """Frontier (predicted and measured bits/dim against K) and chosen timesteps."""
    names = []
    for set_name, s in res["sets"].items():
        rows = s["pred"]["rows"]
        ks = [r["K"] for r in rows]
        meas = s["measured"]
        series: dict[str, list[float | None]] = {}
        errors: dict[str, list[float | None]] = {}
        for method in ("dp", "even", "quadratic"):
            series[f"{method} predicted (train table)"] = [r[f"{method}_pred"] for r in rows]
            series[f"{method} measured (test)"] = [meas[f"{method}:{k}"]["bpd"] for k in ks]
            errors[f"{method} measured (test)"] = [meas[f"{method}:{k}"]["se"] for k in ks]
        series["full chain measured (test)"] = [meas["full"]["bpd"]] * len(ks)
        name = f"{data}-{set_name}-frontier.png"
        ys = [y for v in series.values() for y in v if y is not None and math.isfinite(y)]
        lines_png(out / name, ks, series, "K (network calls)", "bits/dim",
                  title=f"{data}, {set_name} set: bits/dim against K", logx=True,
                  errors=errors)
        if ys and max(ys) > 20 * max(1e-9, abs(min(ys))):
            _log_y(out / name, ks, series, errors, data, set_name)
        names.append(name)
        fig = new_figure()
        ax = fig.add_subplot()
        for r in rows:
            ax.plot(range(len(r["dp_timesteps"])), r["dp_timesteps"], marker=".", ms=3,
                    label=f"K = {r['K']}")
        ax.set_xlabel("step index i")
        ax.set_ylabel("tau_i")
        ax.set_title(f"{data}, {set_name} set: DP timesteps")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        name = f"{data}-{set_name}-timesteps.png"
        save_figure(fig, out / name)
        names.append(name)
    return names


def _log_y(path: Path, ks: list[int], series: dict[str, list[float | None]],
           errors: dict[str, list[float | None]], data: str, set_name: str) -> None:
    """Redraw with a log y axis when strides are orders of magnitude above the DP."""
    fig = new_figure()
    ax = fig.add_subplot()
    for name, ys in series.items():
        pts = [(k, y) for k, y in zip(ks, ys, strict=True)
               if y is not None and math.isfinite(y) and y > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (network calls)")
    ax.set_ylabel("bits/dim (log scale)")
    ax.set_title(f"{data}, {set_name} set: bits/dim against K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _data_section(data: str, res: dict[str, Any], pictures: list[str]) -> list[str]:
    plan = res["plan"]
    lines = [f"## {data}", "",
             f"T = {plan['T']} ({plan['schedule']} betas), variance {plan['variance']}, "
             f"MLP width {plan['hidden']}, {plan['steps']} training steps per network. "
             f"bits/dim on {plan['eval_samples']} test examples.", ""]
    for set_name, s in res["sets"].items():
        mem = s["members"]
        lines += [f"### {set_name} set ({len(mem)} member{'s' if len(mem) > 1 else ''})", "",
                  "| member | t-range | steps | final loss | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {m['index']} | {m['t_lo']}..{m['t_hi']} | {m['steps']} | "
                  f"{_f(m['final_loss'])} | {m['seconds']:.1f} |" for m in mem]
        meas = s["measured"]
        lines += ["", f"Full chain (K = {plan['T']}): measured {_pm(meas['full'])} bits/dim; "
                  f"predicted by the train-split table {_f(s['pred']['full_pred'])}.", "",
                  "| K | DP predicted | DP measured | even predicted | even measured | "
                  "quadratic predicted | quadratic measured |", "|---|---|---|---|---|---|---|"]
        for r in s["pred"]["rows"]:
            k = r["K"]
            lines.append(f"| {k} | {_f(r['dp_pred'])} | {_pm(meas.get(f'dp:{k}'))} | "
                         f"{_f(r['even_pred'])} | {_pm(meas.get(f'even:{k}'))} | "
                         f"{_f(r['quadratic_pred'])} | {_pm(meas.get(f'quadratic:{k}'))} |")
        labels = list(s["samples"])
        lines += ["", f"Sample quality against the test split ({plan['sample_n']} samples per "
                  "schedule):", "", "| metric | " + " | ".join(labels) + " | meaning |",
                  "|---" * (len(labels) + 2) + "|"]
        first = s["samples"][labels[0]]["metrics"]
        for i, m0 in enumerate(first):
            cells = []
            for lb in labels:
                m = s["samples"][lb]["metrics"][i]
                cells.append(f"{m['value']:.4g}" + (f" ± {m['se']:.2g}" if m["se"] else ""))
            meaning = m0["meaning"].replace("|", "\\|")  # keep markdown tables intact
            lines.append(f"| {m0['name']} | " + " | ".join(cells) + f" | {meaning} |")
        acc = next((sq["classifier_accuracy"] for sq in s["samples"].values()
                    if sq["classifier_accuracy"] is not None), None)
        if acc is not None:
            sha = next(iter(s["samples"].values()))["classifier_sha256"]
            lines += ["", f"Features: the built-in digits classifier (test accuracy "
                      f"{acc:.3f}, sha256 {sha[:16]}…)."]
        lines += [""] + [f"![{p}]({p})" for p in pictures if f"-{set_name}-" in p]
        lines += [f"![samples {lb}]({data}/{sq['png']})" for lb, sq in s["samples"].items()] + [""]
    return lines


HEADER = """# ddpm-tools demo report

What each number means:
- **bits/dim**: the negative ELBO (a bound on -log-likelihood) per dimension, in bits. Lower
  is better. Digits are discrete (17 levels): a discretized likelihood, >= 0. 8gaussians is
  continuous: a density, which can be negative.
- **predicted**: the cost table's value for that schedule, fitted on the *train* split;
  this is what the DP minimizes. **measured**: an independent Monte Carlo estimate on the
  *test* split with fresh noise, ± one standard error over test examples. Schedules are
  chosen on train and scored on test.
- **K**: network calls per sample. **DP**: the exact ELBO-optimal K-step schedule;
  **even**: tau_i = round(T i / K); **quadratic**: tau_i = round(T (i/K)^2), made strictly
  increasing. **full chain**: all T steps.
- **4-interval vs single**: a set of 4 networks, each trained only on its quarter of
  [1, T] (parallel score matching), against one network for all t, with equal training
  steps per network.
"""


def write_report(out: Path, results: dict[str, Any], seconds: float, quick: bool,
                 variances: dict[str, Any] | None = None) -> Path:
    """Draw the pictures and write ``report.md`` and ``report.json``; returns report.md.
    ``variances``: the comparison of reverse variances (``demo --variances``), if run."""
    lines = [HEADER, f"Mode: {'quick' if quick else 'full'}; wall-clock {seconds:.0f} s.", ""]
    for data, res in results.items():
        pictures = draw_pictures(out, data, res)
        res["pictures"] = pictures
        lines += _data_section(data, res, pictures)
    extra = {}
    if variances is not None:
        lines += variance_section(variances)
        extra = {"variances": variances}
    atomic_write_json(out / "report.json", {"quick": quick, "seconds": seconds,
                                            "results": results, **extra})
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
