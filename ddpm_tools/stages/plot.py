"""Picture of a timestep clustering: the similarity matrix with the stage boundaries."""

from __future__ import annotations

import os

import numpy as np

from ddpm_tools.io.plots import new_figure, save_figure
from ddpm_tools.stages.clustering import ClusterResult

TICKS = 6  # labelled grid times per axis


def similarity_png(result: ClusterResult, path: str | os.PathLike[str]) -> None:
    """Draw S(g_a, g_b) (left, stage boundaries as white lines) and the similarity of each
    grid time to t = 0 and to t = T (right, boundaries as grey lines); write atomically."""
    S, g = result.similarity, result.grid
    fig = new_figure(11, 4.6)
    ax = fig.add_subplot(1, 2, 1)
    im = ax.imshow(S, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis",
                   interpolation="nearest")
    ticks = np.unique(np.linspace(0, g.size - 1, min(TICKS, g.size)).round().astype(int))
    for setter in (ax.set_xticks, ax.set_yticks):
        setter(ticks)
    ax.set_xticklabels([str(int(g[i])) for i in ticks])
    ax.set_yticklabels([str(int(g[i])) for i in ticks])
    for s in result.starts[1:]:
        ax.axvline(s - 0.5, color="white", lw=1.2, ls="--")
        ax.axhline(s - 0.5, color="white", lw=1.2, ls="--")
    ax.set_xlabel("t")
    ax.set_ylabel("t")
    st = result.settings
    ax.set_title(f"similarity S (target {st.target}, eta {st.eta:g}), {st.method}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of agreeing coordinates")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(g, result.to_start, marker=".", ms=3, label="S(t, 0)")
    ax2.plot(g, result.to_end, marker=".", ms=3, label=f"S(t, T = {result.T})")
    for _, hi in result.ranges[:-1]:
        ax2.axvline(hi + 0.5, color="0.5", lw=1, ls="--")
    if st.method == "threshold":
        ax2.axhline(st.alpha, color="tab:red", lw=0.8, ls=":", label=f"alpha = {st.alpha:g}")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("t")
    ax2.set_ylabel("similarity")
    ax2.set_title(f"{len(result.ranges)} stages: " + ", ".join(
        f"{lo}..{hi}" for lo, hi in result.ranges))
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    save_figure(fig, path)
