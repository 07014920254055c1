"""Figures (the ``plot`` extra): matplotlib with the Agg backend, written atomically.

Only this module imports matplotlib; without it, :func:`require_matplotlib` raises a
:class:`MissingExtraError` saying what to install.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_tools.errors import BadInputError, MissingExtraError
from ddpm_tools.io.files import atomic_write_bytes, ensure_writable_dir

PLOT_HINT = "install the plot extra: pip install 'ddpm-tools[plot]'"


def require_matplotlib() -> None:
    """Raise one clear sentence if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"drawing pictures needs matplotlib; {PLOT_HINT}") from None


def new_figure(width: float = 6.0, height: float = 4.0) -> Any:
    """A matplotlib Figure bound to an Agg canvas (no display needed)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> None:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def scatter_png(points: np.ndarray, path: str | os.PathLike[str], title: str = "",
                reference: np.ndarray | None = None) -> None:
    """2-D samples ``[N, 2]`` as a scatter plot (reference data in grey behind them)."""
    fig = new_figure(5, 5)
    ax = fig.add_subplot()
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.8", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    save_figure(fig, path)


def lines_png(path: str | os.PathLike[str], x: Sequence[float],
              series: Mapping[str, Sequence[float | None]], xlabel: str, ylabel: str,
              title: str = "", logx: bool = False,
              errors: Mapping[str, Sequence[float | None]] | None = None) -> None:
    """Several named series against ``x`` (None values are skipped), optional error bars."""
    fig = new_figure()
    ax = fig.add_subplot()
    for name, ys in series.items():
        pts = [(xi, yi) for xi, yi in zip(x, ys, strict=True) if yi is not None]
        if not pts:
            continue
        xs, vals = zip(*pts, strict=True)
        err = None
        if errors and name in errors:
            err = [e for e, yi in zip(errors[name], ys, strict=True) if yi is not None]
        ax.errorbar(xs, vals, yerr=err, marker="o", ms=3, capsize=2, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def check_plot_target(path: Path) -> None:
    """Fail before any work: matplotlib installed, format known, folder writable."""
    fig = new_figure()
    kinds = fig.canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        raise BadInputError(
            f"--plot {path}: cannot tell the image format from '{path.suffix}'; use a name "
            "ending in .png, .pdf or .svg"
        )
    ensure_writable_dir(path.parent)


def frontier_png(path: str | os.PathLike[str], ks: Sequence[int],
                 series: Mapping[str, Sequence[float | None]], title: str = "") -> None:
    """Predicted bits/dim against the budget K, one line per method (None: no value)."""
    from matplotlib.ticker import NullFormatter, StrMethodFormatter

    fig = new_figure()
    ax = fig.add_subplot()
    for label, ys in series.items():
        ax.plot(ks, [float("nan") if y is None else y for y in ys], marker="o", markersize=3,
                label=label)
    if len(ks) > 1 and max(ks) / min(ks) >= 10:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("budget K (network calls per sample)")
    ax.set_ylabel("predicted bits/dim (cost table)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
