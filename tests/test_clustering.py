"""Timestep clustering: optimal denoiser vs Bayes, segmentation DP vs enumeration, CLI."""

from __future__ import annotations

import itertools
import json
import math
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ddpm_tools.cli.main import app
from ddpm_tools.core.noise_schedule import make_schedule
from ddpm_tools.core.segmentation import best_segmentation, segmentation_score, stage_scores
from ddpm_tools.data import DataSplit, load_data
from ddpm_tools.errors import BadInputError
from ddpm_tools.sets import read_manifest
from ddpm_tools.stages.clustering import (
    cluster_partition,
    make_grid,
    optimal_denoiser,
    ranges_from_starts,
    similarity_matrix,
    threshold_starts,
)
from ddpm_tools.stages.partition import make_partition

runner = CliRunner()


def _bayes_posterior_mean(x_t, t, schedule, points):
    """E[x_0 | x_t] for x_0 uniform on ``points``: explicit Gaussian densities, Bayes' rule."""
    ab = schedule.alpha_bar[t]
    var = 1.0 - ab
    D = points.shape[1]
    out = []
    for x in x_t:
        dens = np.array([(2 * math.pi * var) ** (-D / 2)
                         * math.exp(-np.sum((x - math.sqrt(ab) * y) ** 2) / (2 * var))
                         for y in points])
        post = (dens / 3) / np.sum(dens / 3)
        out.append(post @ points)
    return np.array(out)


def test_optimal_denoiser_equals_bayes_on_three_points():
    rng = np.random.default_rng(1)
    points = np.array([[-1.0, 0.5, 0.0], [0.8, -0.3, 0.4], [0.1, 0.9, -0.7]])
    sch = make_schedule("linear", 100)
    for t in (5, 20, 50, 100):
        x_t = rng.normal(size=(7, 3))
        got = optimal_denoiser(x_t, t, sch, points)
        want = _bayes_posterior_mean(x_t, t, sch, points)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # weights that underflow exp() outright stay finite: x_t at t = 1 next to point 1
    x_t = math.sqrt(sch.alpha_bar[1]) * points[1:2] + 1e-3 + np.array([[0.0, 0.0, 30.0]])
    assert np.all(np.isfinite(optimal_denoiser(x_t, 1, sch, points)))
    np.testing.assert_allclose(optimal_denoiser(math.sqrt(sch.alpha_bar[1]) * points, 1, sch,
                                                points), points, atol=1e-12)


def _enumerate_best(S, K, objective):
    G = S.shape[0]
    scores = {cuts: segmentation_score(S, (0, *cuts), objective)
              for cuts in itertools.combinations(range(1, G), K - 1)}
    best = max(scores.values())
    return best, scores


@pytest.mark.parametrize("objective", ["ratio", "mean"])
def test_segmentation_dp_equals_enumeration(objective):
    rng = np.random.default_rng(7)
    for G in range(1, 9):
        for K in range(1, G + 1):
            for sym in (True, False):
                S = rng.random((G, G))
                if sym:
                    S = (S + S.T) / 2
                    np.fill_diagonal(S, 1.0)
                seg = best_segmentation(S, K, objective)
                best, scores = _enumerate_best(S, K, objective)
                assert len(seg.starts) == K and seg.starts[0] == 0
                assert seg.score == pytest.approx(best, rel=1e-12, abs=1e-12)
                assert scores[seg.starts[1:]] == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_stage_scores_are_block_sums():
    S = np.random.default_rng(0).random((6, 6))
    W = stage_scores(S, "ratio")
    Wm = stage_scores(S, "mean")
    for i in range(6):
        for j in range(6):
            if j < i:
                assert W[i, j] == -np.inf
            else:
                n = j - i + 1
                assert W[i, j] == pytest.approx(S[i:j + 1, i:j + 1].sum() / n)
                assert Wm[i, j] == pytest.approx(S[i:j + 1, i:j + 1].mean())
    with pytest.raises(BadInputError, match="between 1 and the grid size 6"):
        best_segmentation(S, 7)
    with pytest.raises(BadInputError, match="objective"):
        best_segmentation(S, 2, "median")


def test_similarity_matrix_counts_agreeing_coordinates():
    out = np.zeros((3, 2, 2))  # [G, K, D]
    out[1] = [[0.0, 0.2], [0.04, 0.0]]  # vs 0: 3 of 4 coordinates within 0.05
    out[2] = [[1.0, 1.0], [1.0, 0.0]]  # vs 0: 1 of 4; vs 1: 1 of 4 (|0-0| only)
    S = similarity_matrix(out, 0.05)
    np.testing.assert_allclose(S, [[1, 0.75, 0.25], [0.75, 1, 0.25], [0.25, 0.25, 1]])


def test_threshold_rule_uses_prefix_and_suffix_means():
    to_start = np.array([1.0, 0.9, 0.8, 0.2, 0.1, 0.1])  # prefix means 1, .95, .9, .725, ...
    to_end = np.array([0.1, 0.1, 0.2, 0.5, 0.9, 1.0])  # suffix means ..., .8, .95, 1
    assert threshold_starts(to_start, to_end, 0.9, 3) == (0, 3, 4)
    assert threshold_starts(to_start, to_end, 0.9, 2) == (0, 3)
    with pytest.raises(BadInputError, match="no middle stage"):
        threshold_starts(to_start, to_end, 0.7, 3)
    with pytest.raises(BadInputError, match="first stage would be empty"):
        threshold_starts(np.array([0.5, 0.4]), np.array([0.4, 1.0]), 0.9, 2)


def test_ranges_tile_with_nearest_grid_time():
    grid = make_grid(100, 5)
    assert grid.tolist() == [1, 26, 50, 75, 100]
    assert ranges_from_starts(grid, (0, 2, 4), 100) == ((1, 38), (39, 87), (88, 100))
    assert make_grid(10, [2, 5, 9]).tolist() == [2, 5, 9]
    with pytest.raises(BadInputError, match="increase strictly"):
        make_grid(10, [2, 2, 9])


def _blobs():
    """Two far clusters of 4-D points: the denoiser's task changes once, mid-chain."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 0.05, (40, 4)), rng.normal(1, 0.05, (40, 4))])
    return DataSplit(name="blobs", split="train", x=x.astype(np.float32), levels=None)


def test_cluster_partition_is_seeded_and_tiles():
    data, sch = _blobs(), make_schedule("cosine", 40)
    a = cluster_partition(data, sch, 3, samples=16, grid=20, seed=3)
    b = cluster_partition(data, sch, 3, samples=16, grid=20, generator=np.random.default_rng(3))
    assert a.ranges == b.ranges and np.array_equal(a.similarity, b.similarity)
    assert a.ranges[0][0] == 1 and a.ranges[-1][1] == 40
    assert all(r[0] == q[1] + 1 for q, r in zip(a.ranges, a.ranges[1:], strict=False))
    assert np.allclose(a.similarity, a.similarity.T) and np.all(np.diag(a.similarity) == 1)
    assert a.objective == pytest.approx(best_segmentation(a.similarity, 3).score)
    assert a.to_end[-1] == 1.0 and a.to_start[0] > a.to_start[-1] + 0.3  # g[-1] = T
    thr = cluster_partition(data, sch, 3, samples=16, grid=20, seed=3, method="threshold",
                            alpha=0.8)
    assert thr.objective <= a.objective + 1e-12  # the DP is optimal for its objective
    eps = cluster_partition(data, sch, 2, samples=16, grid=20, seed=3, target="eps")
    assert len(eps.ranges) == 2 and eps.settings.target == "eps"


def test_make_partition_cluster_needs_data():
    sch = make_schedule("cosine", 30)
    with pytest.raises(BadInputError, match="needs the training data"):
        make_partition("cluster", sch, 3)
    parts = make_partition("cluster", sch, 3, data=_blobs())
    assert len(parts) == 3 and parts[0][0] == 1 and parts[-1][1] == 30


def test_partition_cli_end_to_end_with_plot(tmp_path):
    plot = tmp_path / "sim.png"
    args = ["partition", "--data", "8gaussians", "--stages", "3", "--T", "50", "--grid", "12",
            "--samples", "32", "--max-reference", "1024", "--plot", str(plot)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    st = obj["stages"]
    assert len(st) == 3 and st[0]["t_lo"] == 1 and st[-1]["t_hi"] == 50
    assert sum(s["size"] for s in st) == 50 and sum(s["grid_points"] for s in st) == 12
    assert np.array(obj["similarity"]).shape == (12, 12) and obj["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["partition", "--data", "digits", "--stages", "3", "--T", "40",
                              "--schedule", "cosine", "--grid", "10", "--samples", "16",
                              "--method", "threshold", "--alpha", "0.8"])
    assert res.exit_code == 0, res.output
    for text in ("t-range", "mean similarity", "threshold", "objective"):
        assert text in res.stdout


@pytest.mark.parametrize("extra, message", [
    (["--stages", "0"], "between 1 and the grid size 8"),
    (["--stages", "9"], "between 1 and the grid size 8"),
    (["--eta", "0"], "--eta must be a positive"),
    (["--eta", "-1"], "--eta must be a positive"),
    (["--method", "threshold", "--alpha", "1.5"], "--alpha must be a fraction"),
    (["--method", "threshold", "--alpha", "0"], "--alpha must be a fraction"),
    (["--alpha", "0.5"], "add --method threshold"),
    (["--method", "threshold", "--stages", "4"], "2 or 3 stages"),
    (["--grid", "60"], "grid size must be between 1 and T = 50"),
    (["--target", "v"], "choose x0 or eps"),
])
def test_partition_cli_bad_input_exits_2(extra, message):
    res = runner.invoke(app, ["partition", "--data", "8gaussians", "--T", "50", "--grid", "8",
                              "--samples", "4", *extra])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) <= 3


def test_train_partition_cluster_tiles_with_cluster_boundaries(tmp_path):
    out = tmp_path / "set"
    res = runner.invoke(app, ["train", "--data", "8gaussians", "--out", str(out),
                              "--partition", "cluster", "--intervals", "3", "--steps", "2",
                              "--T", "30", "--schedule", "cosine", "--workers", "1",
                              "--batch-size", "16", "--json"])
    assert res.exit_code == 0, res.output
    man = read_manifest(out)
    got = [(m.t_lo, m.t_hi) for m in man.members]
    assert got[0][0] == 1 and got[-1][1] == 30
    assert all(b[0] == a[1] + 1 for a, b in zip(got, got[1:], strict=False))
    want = cluster_partition(load_data("8gaussians", "train", seed=0),
                             make_schedule("cosine", 30), 3, grid=30).ranges
    assert got == list(want) and man.training["partition"] == "cluster"


def test_partition_plot_needs_matplotlib_and_a_known_format(tmp_path, monkeypatch):
    args = ["partition", "--data", "8gaussians", "--T", "50", "--grid", "8", "--samples", "4"]
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "sim.xyz")])
    assert res.exit_code == 2 and "image format" in res.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "sim.png")])
    assert res.exit_code == 2 and "matplotlib" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "sim.png").exists()
